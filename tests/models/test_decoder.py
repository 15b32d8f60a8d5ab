"""Tests for models/decoder.py: options and logical axes, causal / prefix-LM / padding masks,
the KV cache against the full forward pass, scan, sharding, HF Llama parity, FLOPs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import AxisType, PartitionSpec

from experiments.training import sharding
from models import attention, decoder, flops
from tests.models.test_layers import (
    assert_logically_partitioned,
    param_names,
    random_params,
    stack_blocks,
)

VOCAB, WIDTH, HEADS, MLP, PAD = 32, 32, 4, 64, 0
BASE = dict(vocab_size=VOCAB, width=WIDTH, depth=2, mlp_dim=MLP, num_heads=HEADS, max_len=16)
LLAMA = dict(posemb="rope", norm_type="rmsnorm", mlp_type="swiglu", num_kv_heads=2, attn_bias=False)
# name: (options, memory width or None). Together they cover rope/learn/none, rmsnorm/layernorm,
# swiglu/gelu, MHA/GQA/MQA, tied/untied, cross-attention from a narrower or equal memory, and a
# head_dim other than width / num_heads.
CONFIGS = {
    "gpt2": ({}, None),
    "llama": (LLAMA, None),
    "mqa_untied_cross": (
        LLAMA | dict(num_kv_heads=1, tie_embeddings=False, cross_attention=True),
        24,
    ),
    "learn_cross_gqa": (dict(num_kv_heads=2, head_dim=16, cross_attention=True), WIDTH),
    "none_untied": (dict(posemb="none", tie_embeddings=False), None),
}
PROMPTS = np.array([[5, 6, 7, PAD, PAD], [8, 9, 10, 11, 12], [4, PAD, PAD, PAD, PAD]], np.int32)
LENGTHS = np.array([3, 5, 1], np.int32)
NEW = np.array([[13, 14, 15, 16], [17, 18, 19, 20], [21, 22, 23, 24]], np.int32)
MEMORY_MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], bool)


def make(name, **kw):
    options, memory_width = CONFIGS[name]
    model = decoder.Decoder(**(BASE | options | kw))
    memory = {}
    if memory_width:
        mem = np.random.default_rng(5).standard_normal((3, 4, memory_width)).astype(np.float32)
        memory = dict(memory=mem, memory_mask=MEMORY_MASK)
    return model, memory


def tokens(seed, shape=(2, 8)):
    return np.random.default_rng(seed).integers(1, VOCAB, shape).astype(np.int32)


@pytest.mark.parametrize("name", CONFIGS)
def test_parameters_and_logical_axes(name):
    model, memory = make(name)
    abstract = jax.eval_shape(model.init, jax.random.key(0), PROMPTS, **memory)
    assert_logically_partitioned(abstract)
    params = abstract["params"]
    cfg = model.config()
    heads, kv_heads, head_dim = HEADS, cfg["num_kv_heads"], cfg["head_dim"]
    emb = params["token_embedding"]["embedding"]
    assert emb.names == ("vocab", "embed") and emb.value.shape == (VOCAB, WIDTH)
    assert ("pos_embedding" in params) == (model.posemb == "learn")
    assert ("lm_head" in params) == (not model.tie_embeddings)
    if not model.tie_embeddings:
        assert params["lm_head"]["kernel"].names == ("embed", "vocab")
    block = params["block_1"]
    attn = block["attn"]
    assert attn["query"]["kernel"].value.shape == (WIDTH, heads, head_dim)
    assert attn["key"]["kernel"].value.shape == (WIDTH, kv_heads, head_dim)
    assert attn["key"]["kernel"].names == ("embed", "heads", "kv")
    assert attn["out"]["kernel"].value.shape == (heads, head_dim, WIDTH)
    assert ("bias" in attn["query"]) == model.attn_bias
    mlp = {"swiglu": {"gate", "up", "down"}, "gelu": {"fc1", "fc2"}}[model.mlp_type]
    assert set(block["mlp"]) == mlp
    assert ("bias" in block["ln_1"]) == (model.norm_type == "layernorm")
    assert ("cross_attn" in block) == ("ln_cross" in block) == model.cross_attention
    if model.cross_attention:
        width = memory["memory"].shape[-1]
        assert block["cross_attn"]["value"]["kernel"].value.shape == (width, kv_heads, head_dim)


def test_parameter_names_are_stable():
    model, _ = make("llama", depth=1)
    block = {
        f"block_0/{m}/kernel" for m in ("attn/query", "attn/key", "attn/value", "attn/out")
    } | {f"block_0/mlp/{m}/kernel" for m in ("gate", "up", "down")}
    norms = {"block_0/ln_1/scale", "block_0/ln_2/scale", "decoder_norm/scale"}
    assert param_names(model, PROMPTS) == block | norms | {"token_embedding/embedding"}


def test_variant_and_errors():
    assert decoder.Decoder(variant="mu", num_kv_heads=1).config() == dict(
        width=32, depth=1, mlp_dim=128, num_heads=2, num_kv_heads=1, head_dim=16
    )
    init = lambda m, *a, **kw: jax.eval_shape(m.init, jax.random.key(0), *a, **kw)  # noqa: E731
    bad = {
        "patch size": dict(variant="mu/8"),
        "does not divide": dict(num_kv_heads=3),
        "not divisible": dict(num_heads=5),
        "Unknown posemb": dict(posemb="alibi"),
        "Unknown norm_type": dict(norm_type="batchnorm"),
        "Unknown mlp_type": dict(mlp_type="geglu"),
    }
    for message, kw in bad.items():
        with pytest.raises(ValueError, match=message):
            init(decoder.Decoder(**(BASE | kw)), PROMPTS)
    with pytest.raises(ValueError, match="exceed max_len"):
        init(decoder.Decoder(**(BASE | dict(max_len=4))), PROMPTS)
    model, memory = make("learn_cross_gqa")
    with pytest.raises(ValueError, match="needs memory"):
        init(model, PROMPTS)
    with pytest.raises(ValueError, match="without cross_attention"):
        init(make("gpt2")[0], PROMPTS, **memory)
    with pytest.raises(ValueError, match="memory_len"):
        model.init_cache(3, 8)
    with pytest.raises(ValueError, match="init_cache"):
        init(model, PROMPTS, cache=model.init_cache(3, 9, memory_len=2), **memory)


def assert_close(a, b, atol=1e-5, **kw):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0, **kw)


def count_memory_projections(fn):
    """Runs fn(); returns (its result, how many times cross-attention projected keys)."""
    calls = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if module.name == "key" and module.parent.name == "cross_attn":
            calls.append(context.method_name)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        out = fn()
    return out, len(calls)


@pytest.mark.parametrize("name", CONFIGS)
def test_cache_matches_full_forward(name):
    """Right-padded prompts of different lengths prefilled at once, then one token per step,
    give the full forward pass's logits over each example's contiguous sequence."""
    model, memory = make(name)
    # The projection count below is of traced calls: one per layer without the shared trace.
    model = model.clone(jit_blocks=False)
    variables = random_params(model, PROMPTS, **memory)
    steps, prompt_len = NEW.shape[1], PROMPTS.shape[1]
    apply = jax.jit(model.apply)

    # Reference: prompt then new tokens, contiguous, padding only at the end.
    seqs = np.full((3, prompt_len + steps), PAD, np.int32)
    for b, n in enumerate(LENGTHS):
        seqs[b, : n + steps] = np.r_[PROMPTS[b, :n], NEW[b]]
    full_mask = np.arange(seqs.shape[1]) < (LENGTHS + steps)[:, None]
    full, aux = apply(variables, seqs, attention_mask=full_mask, **memory)
    assert full.shape == (3, prompt_len + steps, VOCAB)
    assert aux["hidden"].shape == (3, prompt_len + steps, WIDTH) and "cache" not in aux
    params = variables["params"]
    head = (
        params["token_embedding"]["embedding"].T
        if model.tie_embeddings
        else params["lm_head"]["kernel"]
    )
    assert_close(full, aux["hidden"] @ head, atol=1e-4)

    cache = model.init_cache(3, prompt_len + steps, memory_len=4 if memory else None)
    prompt_mask = np.arange(prompt_len) < LENGTHS[:, None]
    (logits, aux), calls = count_memory_projections(
        lambda: apply(variables, PROMPTS, attention_mask=prompt_mask, cache=cache, **memory)
    )
    assert calls == (model.depth if memory else 0)
    cache = aux["cache"]
    assert int(cache["index"]) == prompt_len
    np.testing.assert_array_equal(cache["valid"][:, :prompt_len], prompt_mask)
    assert not cache["valid"][:, prompt_len:].any()
    for b, n in enumerate(LENGTHS):
        assert_close(logits[b, :n], full[b, :n], err_msg=f"prefill, example {b}")
    if memory:  # the memory's keys, projected once at prefill, live in the cache
        kernel = params["block_1"]["cross_attn"]["key"]
        want = jnp.einsum("bmd,dhk->bmhk", memory["memory"], kernel["kernel"])
        want = want + kernel.get("bias", 0.0)
        assert_close(cache["cross_k"][:, 1], want.transpose(0, 2, 1, 3))  # head-major
        np.testing.assert_array_equal(cache["memory_valid"], MEMORY_MASK)

    for j in range(steps):
        positions = (LENGTHS + j)[:, None]
        (logits, aux), calls = count_memory_projections(
            lambda j=j, c=cache, p=positions: apply(
                variables, NEW[:, j : j + 1], positions=p, cache=c
            )
        )
        assert calls == 0  # decoding steps never see the memory: no recomputation
        cache = aux["cache"]
        assert int(cache["index"]) == prompt_len + j + 1
        assert_close(logits[:, 0], full[np.arange(3), LENGTHS + j], err_msg=f"step {j}")
    # Padding slots stay invalid; every real token's slot is valid.
    want_valid = np.c_[prompt_mask, np.ones((3, steps), bool)]
    np.testing.assert_array_equal(cache["valid"], want_valid)


def test_causal_prefix_and_padding_masks():
    model, _ = make("llama")
    x = tokens(0)
    variables = random_params(model, x)
    apply = jax.jit(model.apply)
    logits = lambda t, **kw: np.asarray(apply(variables, t, **kw)[0])  # noqa: E731
    changed = lambda a, b: np.abs(a - b).max(-1) > 1e-6  # noqa: E731 [B, T] bool
    base = logits(x)

    # Causal: changing token 5 changes positions >= 5 only.
    later = x.copy()
    later[:, 5] = (later[:, 5] % (VOCAB - 1)) + 1
    assert changed(base, logits(later)).tolist() == [[False] * 5 + [True] * 3] * 2

    # Prefix LM (prefix 4 and 6): prefix positions see the whole prefix, suffix ones the past.
    prefix_len = np.array([4, 6], np.int32)
    prefixed = logits(x, prefix_len=prefix_len)
    at_2 = x.copy()
    at_2[:, 2] = (at_2[:, 2] % (VOCAB - 1)) + 1
    assert changed(prefixed, logits(at_2, prefix_len=prefix_len)).all()
    at_6 = x.copy()
    at_6[:, 6] = (at_6[:, 6] % (VOCAB - 1)) + 1
    assert (
        changed(prefixed, logits(at_6, prefix_len=prefix_len)).tolist()
        == [[False] * 6 + [True] * 2] * 2
    )
    at_5 = x.copy()
    at_5[:, 5] = (at_5[:, 5] % (VOCAB - 1)) + 1
    # Row 0: 5 is a suffix position (causal); row 1: inside the prefix (all of it sees it).
    assert changed(prefixed, logits(at_5, prefix_len=prefix_len)).tolist() == [
        [False] * 5 + [True] * 3,
        [True] * 8,
    ]
    assert_close(logits(x, prefix_len=np.zeros(2, np.int32)), base)

    # Padding (holes anywhere) is never attended: changing masked tokens changes nothing else.
    mask = np.ones((2, 8), bool)
    mask[0, [1, 6, 7]] = False
    mask[1, 0] = False  # row 1's first query sees no key at all
    masked = logits(x, attention_mask=mask)
    other = np.where(mask, x, (x + 7) % VOCAB)
    assert not changed(masked, logits(other, attention_mask=mask))[mask].any()
    assert np.isfinite(masked).all()
    # pad_id masks the same keys.
    padded = np.where(mask, x, PAD)
    pad_model = model.clone(pad_id=PAD)
    assert_close(jax.jit(pad_model.apply)(variables, padded)[0][mask], masked[mask])
    # A fully masked row gives finite logits.
    empty = logits(x, attention_mask=np.zeros((2, 8), bool), prefix_len=prefix_len)
    assert np.isfinite(empty).all()


def test_memory_padding_is_never_attended():
    model, memory = make("learn_cross_gqa")
    variables = random_params(model, PROMPTS, **memory)
    apply = jax.jit(model.apply)
    out = apply(variables, PROMPTS, **memory)[0]
    noisy = np.where(MEMORY_MASK[..., None], memory["memory"], 100.0)
    assert_close(apply(variables, PROMPTS, memory=noisy, memory_mask=MEMORY_MASK)[0], out)
    unmasked = apply(variables, PROMPTS, memory=memory["memory"])[0]
    assert not np.allclose(unmasked, out, atol=1e-4)


def test_prefix_embeddings_equal_their_tokens():
    model, _ = make("llama")
    x = tokens(1)
    variables = random_params(model, x)
    table = variables["params"]["token_embedding"]["embedding"]
    want = model.apply(variables, x, prefix_len=np.array([3, 5]))[0]
    got = model.apply(
        variables, x[:, 3:], prefix_embeddings=table[x[:, :3]], prefix_len=np.array([3, 5])
    )[0]
    assert got.shape == want.shape
    assert_close(got, want)


@pytest.mark.parametrize("policy", ["save_dots", "save_dots_no_batch"])
def test_remat_policies_match_plain(policy):
    model, memory = make("mqa_untied_cross")
    params = random_params(model, PROMPTS, **memory)["params"]
    mask = np.arange(5) < LENGTHS[:, None]

    def value_and_grad(m):
        def loss(p):
            logits = m.apply({"params": p}, PROMPTS, attention_mask=mask, **memory)[0]
            return jnp.sum(jnp.sin(logits))

        return jax.jit(jax.value_and_grad(loss))(params)

    ref, g_ref = value_and_grad(model)
    val, g = value_and_grad(model.clone(remat=True, remat_policy=policy))
    np.testing.assert_allclose(val, ref, rtol=1e-6)
    jax.tree.map(lambda a, b: assert_close(a, b, atol=1e-5), g, g_ref)


def test_scan_and_remat_match_unscanned():
    model, memory = make("mqa_untied_cross")
    variables = random_params(model, PROMPTS, **memory)
    params = variables["params"]
    scanned = model.clone(scan=True, remat=True)
    scanned_params = stack_blocks(params, model.depth)
    mask = np.arange(5) < LENGTHS[:, None]

    def value_and_grad(m, p):
        def loss(p):
            logits = m.apply({"params": p}, PROMPTS, attention_mask=mask, **memory)[0]
            return jnp.sum(jnp.sin(logits))

        return jax.jit(jax.value_and_grad(loss))(p)

    ref, g_ref = value_and_grad(model, params)
    val, g = value_and_grad(scanned, scanned_params)
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    jax.tree.map(lambda a, b: assert_close(a, b, atol=1e-4), g, stack_blocks(g_ref, model.depth))

    def prefill_and_step(m, p):
        cache = m.init_cache(3, 7, memory_len=4)
        out, aux = m.apply({"params": p}, PROMPTS, attention_mask=mask, cache=cache, **memory)
        step, aux = m.apply(
            {"params": p}, NEW[:, :1], positions=LENGTHS[:, None], cache=aux["cache"]
        )
        return out, step, aux["cache"]

    run = lambda m, p: jax.jit(lambda p: prefill_and_step(m, p))(p)  # noqa: E731
    for a, b in zip(run(model, params), run(scanned, scanned_params), strict=True):
        jax.tree.map(assert_close, a, b)


def test_grouped_attention_implementations_agree():
    x = np.random.default_rng(0).standard_normal((2, 6, WIDTH)).astype(np.float32)
    positions = np.array([np.arange(6), np.arange(3, 9)])
    mask = np.tril(np.ones((6, 6), bool))[None, None] & np.ones((2, 1, 1, 6), bool)
    mask[1, :, :, 0] = False  # row 1's first query sees no key
    gqa = lambda impl, **kw: attention.GroupedQueryAttention(  # noqa: E731
        HEADS, 2, rope_base=1e4, implementation=impl, **kw
    )
    variables = random_params(gqa("einsum"), x, mask=mask, positions=positions)
    outs = [
        jax.jit(gqa(impl).apply)(variables, x, mask=mask, positions=positions)[0]
        for impl in ("einsum", "xla")
    ]
    assert_close(outs[0], outs[1])
    assert np.isfinite(outs[0]).all()
    # With as many key/value heads as query heads and no rope it is MultiHeadAttention.
    mha = attention.MultiHeadAttention(HEADS)
    mha_vars = random_params(mha, x, mask=mask)
    got = jax.jit(attention.GroupedQueryAttention(HEADS).apply)(mha_vars, x, mask=mask)[0]
    assert_close(got, jax.jit(mha.apply)(mha_vars, x, mask=mask))


def test_dropout_only_in_training():
    model, _ = make("gpt2", dropout=0.3)
    variables = random_params(model, PROMPTS)
    apply = jax.jit(model.apply, static_argnames="train")
    eval_out = apply(variables, PROMPTS)[0]
    train_out = apply(variables, PROMPTS, train=True, rngs={"dropout": jax.random.key(1)})[0]
    assert not np.allclose(train_out, eval_out)
    # Outside training the output is the dropout-free model's.
    plain = jax.jit(model.clone(dropout=0.0).apply)(variables, PROMPTS)[0]
    np.testing.assert_allclose(eval_out, plain, atol=1e-6)


def test_sharded_matches_single_device():
    model, memory = make("mqa_untied_cross", num_kv_heads=2, scan=True)
    x = np.r_[PROMPTS, PROMPTS[:1]]  # batch 4 = data x fsdp
    memory = {k: np.r_[v, v[:1]] for k, v in memory.items()}
    mask = np.arange(5) < np.r_[LENGTHS, LENGTHS[:1]][:, None]
    mesh = jax.make_mesh((2, 2, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    rules = sharding.DEFAULT_RULES
    key = jax.random.key(0, impl="rbg")

    def run(variables):
        cache = model.init_cache(4, 6, memory_len=4)
        full = model.apply(variables, x, attention_mask=mask, **memory)[0]
        _, aux = model.apply(variables, x, attention_mask=mask, cache=cache, **memory)
        step = model.apply(variables, x[:, :1], positions=mask.sum(1)[:, None], cache=aux["cache"])
        return full, step[0]

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(model.init, key, x, **memory)
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        variables = jax.jit(model.init, out_shardings=shardings)(key, x, **memory)
        sharded = jax.jit(run)(variables)
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    assert flat["token_embedding/embedding"].value.sharding.spec == PartitionSpec("tensor", "fsdp")
    assert flat["blocks/attn/key/kernel"].value.sharding.spec == PartitionSpec(
        None, "fsdp", "tensor", None
    )
    single = jax.jit(run)(jax.device_get(nn.meta.unbox(variables)))
    for a, b in zip(sharded, single, strict=True):
        assert_close(a, b)


def test_llama_options_match_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=1e5,
        tie_word_embeddings=True,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    hd = WIDTH // HEADS

    def layer(i):
        p = lambda name: sd[f"model.layers.{i}.{name}.weight"]  # noqa: E731
        heads = lambda w, n: w.T.reshape(WIDTH, n, hd)  # noqa: E731 [out, in] -> [in, n, hd]
        return {
            "ln_1": {"scale": p("input_layernorm")},
            "ln_2": {"scale": p("post_attention_layernorm")},
            "attn": {
                "query": {"kernel": heads(p("self_attn.q_proj"), HEADS)},
                "key": {"kernel": heads(p("self_attn.k_proj"), 2)},
                "value": {"kernel": heads(p("self_attn.v_proj"), 2)},
                "out": {"kernel": p("self_attn.o_proj").T.reshape(HEADS, hd, WIDTH)},
            },
            "mlp": {n: {"kernel": p(f"mlp.{n}_proj").T} for n in ("gate", "up", "down")},
        }

    params = {f"block_{i}": layer(i) for i in range(2)}
    params["token_embedding"] = {"embedding": sd["model.embed_tokens.weight"]}
    params["decoder_norm"] = {"scale": sd["model.norm.weight"]}
    model = decoder.Decoder(**BASE, **LLAMA, norm_eps=1e-5, rope_base=1e5)
    x = tokens(3, (2, 12))
    with torch.no_grad():
        want = hf(torch.from_numpy(x).long()).logits.numpy()
    got = jax.jit(model.apply)({"params": params}, x)[0]
    assert_close(got, want, atol=1e-4)


def test_flops_match_xla():
    width, heads, kv_heads, mlp, vocab, t = 128, 4, 2, 256, 256, 16
    model = decoder.Decoder(
        vocab_size=vocab,
        width=width,
        depth=2,
        mlp_dim=mlp,
        num_heads=heads,
        max_len=32,
        num_kv_heads=kv_heads,
        mlp_type="swiglu",
        posemb="rope",
        norm_type="rmsnorm",
        cross_attention=True,
    )
    x = jax.ShapeDtypeStruct((2, t), jnp.int32)
    memory = jax.ShapeDtypeStruct((2, 8, 64), jnp.float32)
    variables = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x, memory=memory))
    kw = dict(width=width, depth=2, mlp_dim=mlp, vocab_size=vocab, num_heads=heads)
    kw |= dict(num_kv_heads=kv_heads, glu=True, memory_len=8, memory_width=64)

    def xla(fn, *args):
        return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]

    def check(analytic, counted):
        # The analytic count has only the matmuls; XLA adds norms, softmax, rope, residuals.
        assert analytic <= counted <= 1.05 * analytic, (analytic, counted, counted / analytic)

    forward = lambda v, x, m: model.apply(v, x, memory=m)[0]  # noqa: E731
    check(2 * flops.decoder_forward_flops(t, **kw), xla(forward, variables, x, memory))
    cache = jax.eval_shape(lambda: model.init_cache(2, 32, memory_len=8))
    token = jax.ShapeDtypeStruct((2, 1), jnp.int32)
    step = lambda v, x, c: model.apply(v, x, cache=c)[0]  # noqa: E731
    analytic = flops.decoder_forward_flops(1, context_len=32, project_memory=False, **kw)
    check(2 * analytic, xla(step, variables, token, cache))
