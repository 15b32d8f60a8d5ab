"""Tests for models/layers.py: attention kernels, encoder fast paths, pooling, posembs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import AxisType
from scipy.special import erf

from models import attention, layers

AXES = {"batch", "length", "embed", "mlp", "heads", "kv", "vocab", "patches", "latents"}


def assert_logically_partitioned(variables) -> int:
    """Every param leaf (of `init` or its `eval_shape`) is boxed with logical names of the
    right rank; returns the number of leaves."""
    leaves = jax.tree.leaves(
        variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
        assert len(leaf.names) == leaf.value.ndim, (leaf.names, leaf.value.shape)
        assert set(leaf.names) - {None} <= AXES | {layers.LAYERS_AXIS}, leaf.names
    return len(leaves)


def random_params(model, *args, seed: int = 0, **kwargs):
    """Unboxed variables with the shapes of `model.init(key, *args)`, filled from numpy.

    Compiling `init` costs seconds per model on these CPUs (mostly the threefry RNG), so
    tests that only need *some* weights draw them on the host: N(0, 0.2), norm scales
    1 + N(0, 0.2).
    """
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args, **kwargs))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        value = 0.2 * rng.standard_normal(leaf.shape)
        if getattr(path[-1], "key", None) == "scale":
            value += 1.0
        return jnp.asarray(value, leaf.dtype)

    return jax.tree.map_with_path(fill, abstract)


def sharded_vs_single(model, inputs, mesh_shape=(2, 4, 1)):
    """Inits with jit(out_shardings) on a (data, fsdp, tensor) mesh; returns (sharded output,
    single-device output of the same params, sharded variables)."""
    mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("vocab", "tensor"),
        ("kv", None),
        ("length", None),
        ("patches", None),
    )
    key = jax.random.key(0, impl="rbg")  # threefry init compiles several times slower on CPU
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(model.init, key, inputs)
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        variables = jax.jit(model.init, out_shardings=shardings)(key, inputs)
        out = jax.jit(lambda v, x: model.apply(v, x)[0])(variables, inputs)
    single = jax.device_get(nn.meta.unbox(variables))
    ref = jax.jit(lambda v, x: model.apply(v, x)[0])(single, np.asarray(inputs))
    return np.asarray(out), np.asarray(ref), variables


def normal(seed, *shape):
    """Host-side N(0, 1) (an eager jax.random call compiles for seconds per shape here)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def qkv(seed, b=2, t=5, s=5, h=2, d=8):
    return normal(seed, b, t, h, d), normal(seed + 1, b, s, h, d), normal(seed + 2, b, s, h, d)


def _names(prefix: str, modules: tuple[str, ...], weights: tuple[str, ...]) -> set[str]:
    return {f"{prefix}/{m}/{w}" for m in modules for w in weights}


def block_param_names(prefix: str) -> set[str]:
    """Parameter paths of one `EncoderBlock` (or the attention + MLP of a MAPHead)."""
    return (
        _names(f"{prefix}/attn", ("query", "key", "value", "out"), ("kernel", "bias"))
        | _names(f"{prefix}/mlp", ("fc1", "fc2"), ("kernel", "bias"))
        | _names(prefix, ("ln_1", "ln_2"), ("scale", "bias"))
    )


def map_head_param_names(prefix: str = "map_head") -> set[str]:
    """Parameter paths of a `MAPHead`: one LayerNorm "ln" instead of a block's two."""
    names = block_param_names(prefix) - _names(prefix, ("ln_1", "ln_2"), ("scale", "bias"))
    return names | _names(prefix, ("ln",), ("scale", "bias")) | {f"{prefix}/probe"}


def param_names(model, *args) -> set[str]:
    """Paths ("encoder/block_0/mlp/fc1/kernel") of the model's parameters, as checkpoints and
    exports address them."""
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
    return set(traverse_util.flatten_dict(abstract["params"], sep="/"))


@pytest.mark.parametrize(
    "causal,masked,cross",
    [(False, False, False), (True, True, False), (False, True, True), (True, True, True)],
)
def test_einsum_attention_matches_jax(causal, masked, cross):
    q, k, v = qkv(0, s=7 if cross else 5)
    mask = None
    if masked:
        # Key padding; row 1 also masks key 0, so with causal its first query sees nothing.
        valid = np.ones((2, k.shape[1]), bool)
        valid[0, -2:] = False
        valid[1, 0] = False
        mask = jnp.asarray(valid[:, None, None, :])

    @jax.jit
    def run_both(q, k, v):
        def run(impl):
            f = lambda q, k, v: attention.attention(q, k, v, mask, causal, impl)
            grads = jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2))(q, k, v)
            return f(q, k, v), grads

        return run("einsum"), run("xla")

    (out_e, grads_e), (out_x, grads_x) = run_both(q, k, v)
    assert out_e.shape == q.shape
    np.testing.assert_allclose(out_e, out_x, atol=1e-5)
    for ge, gx in zip(grads_e, grads_x, strict=True):
        np.testing.assert_allclose(ge, gx, atol=1e-5)
    assert np.all(np.isfinite(out_e))


def test_attention_masks_and_causality_are_respected():
    q, k, v = qkv(1)
    only_key_2 = jnp.zeros((2, 1, 1, 5), bool).at[:, ..., 2].set(True)

    @jax.jit
    def run(q, k, v):
        return (
            attention.einsum_attention(q, k, v, causal=True),
            attention.einsum_attention(q, k, v, mask=only_key_2),
        )

    causal, masked = run(q, k, v)
    # The first query can only see the first key: output is exactly v[:, 0].
    np.testing.assert_allclose(causal[:, 0], v[:, 0], atol=1e-6)
    np.testing.assert_allclose(masked, jnp.broadcast_to(v[:, 2:3], masked.shape), atol=1e-6)
    with pytest.raises(ValueError, match="Unknown attention implementation"):
        attention.attention(q, k, v, implementation="flash")


def test_multihead_attention_implementations_agree():
    x = normal(0, 2, 6, 32)
    mask = jnp.ones((2, 1, 1, 6), bool).at[1, ..., 4:].set(False)
    mha = lambda impl: attention.MultiHeadAttention(num_heads=4, implementation=impl)
    params = random_params(mha("einsum"), x, mask=mask)
    outs = [
        jax.jit(mha(i).apply, static_argnames="causal")(params, x, mask=mask, causal=True)
        for i in ("einsum", "xla", None)
    ]
    assert outs[0].shape == x.shape
    for o in outs[1:]:
        np.testing.assert_allclose(outs[0], o, atol=1e-5)
    kernels = params["params"]
    assert kernels["query"]["kernel"].shape == (32, 4, 8)
    assert kernels["out"]["kernel"].shape == (4, 8, 32)
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(attention.MultiHeadAttention(num_heads=5).init, jax.random.key(0), x)


def test_activations():
    x = jnp.array([-2.0, -0.5, 0.0, 1.0, 3.0])
    np.testing.assert_allclose(
        layers.activation_fn("quick_gelu")(x), x / (1 + np.exp(-1.702 * np.asarray(x))), rtol=1e-6
    )
    erf = jax.scipy.special.erf
    np.testing.assert_allclose(
        layers.activation_fn("gelu")(x), 0.5 * x * (1 + erf(x / np.sqrt(2))), rtol=1e-6
    )
    tanh_gelu = layers.activation_fn("gelu_tanh")(x)
    assert not np.allclose(tanh_gelu, layers.activation_fn("gelu")(x), atol=1e-6, rtol=0)
    np.testing.assert_allclose(tanh_gelu, layers.activation_fn("gelu")(x), atol=1e-3)
    with pytest.raises(ValueError, match="Unknown activation"):
        layers.activation_fn("relu6")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_exact_gelu_matches_jax_gelu_forward_and_backward(dtype):
    # The erf formula is a fast path for jax.nn.gelu(approximate=False): same values, same grads.
    x = jnp.linspace(-10.0, 10.0, 4001, dtype=jnp.float32).astype(dtype)
    ours, ref = layers.activation_fn("gelu"), lambda v: jax.nn.gelu(v, approximate=False)
    assert ours(x).dtype == dtype
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(
        ours(x).astype(jnp.float32), ref(x).astype(jnp.float32), atol=tol, rtol=tol
    )

    # Elementwise, so the gradient of the sum is the per-element derivative.
    def grad(f):
        return jax.grad(lambda v: jnp.sum(f(v).astype(jnp.float32)))(x).astype(jnp.float32)

    np.testing.assert_allclose(grad(ours), grad(ref), atol=tol, rtol=tol)


def test_sincos_2d_values():
    h, w, d = 3, 4, 16
    emb = np.asarray(layers.sincos_2d(h, w, d))
    assert emb.shape == (1, h * w, d)
    q = d // 4
    # Position (0, 0): sin terms 0, cos terms 1.
    np.testing.assert_allclose(emb[0, 0], np.r_[np.zeros(q), np.ones(q), np.zeros(q), np.ones(q)])
    omega = 1.0 / 10_000.0 ** (np.arange(q) / (q - 1))
    row, col = 2, 3
    expect = np.r_[
        np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)
    ]
    np.testing.assert_allclose(emb[0, row * w + col], expect, rtol=1e-6, atol=1e-6)
    # Each (sin, cos) pair lies on the unit circle: every row has squared norm d / 2.
    np.testing.assert_allclose((emb[0] ** 2).sum(-1), d / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        layers.sincos_2d(2, 2, 18)


def test_sincos_1d_values():
    emb = np.asarray(layers.sincos_1d(5, 8))
    assert emb.shape == (1, 5, 8)
    omega = 1.0 / 10_000.0 ** (np.arange(4) / 3)
    np.testing.assert_allclose(emb[0, 3], np.r_[np.sin(3 * omega), np.cos(3 * omega)], atol=1e-6)
    # Distinct positions get distinct embeddings.
    assert np.linalg.matrix_rank(emb[0]) == 5


def encoder(**kw):
    cfg = dict(depth=2, num_heads=2, mlp_dim=64, causal=True)
    return layers.Encoder(**(cfg | kw))


def stack_blocks(params, depth):
    """Unscanned {"block_i": tree} -> scanned {"blocks": tree stacked along axis 0}."""
    params = dict(params)
    blocks = [params.pop(f"block_{i}") for i in range(depth)]
    params["blocks"] = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
    return params


@pytest.fixture(scope="module")
def encoder_inputs():
    x = normal(0, 2, 6, 32)
    mask = jnp.ones((2, 1, 1, 6), bool).at[1, ..., 4:].set(False)
    params = random_params(encoder(), x, mask)["params"]
    return x, mask, params


def forward_and_grads(model, params, x, mask):
    def loss(p, x):
        y, _ = model.apply({"params": p}, x, mask)
        return jnp.sum(jnp.sin(y)), y

    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, y), grads = grad_fn(params, x)
    return y, grads


@pytest.fixture(scope="module")
def encoder_reference(encoder_inputs):
    x, mask, params = encoder_inputs
    return forward_and_grads(encoder(), params, x, mask)


def assert_trees_close(a, b, atol=1e-5):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol), a, b)


def test_scanned_encoder_matches_unscanned(encoder_inputs, encoder_reference):
    # scan + remat together is checked on a whole ViT in test_vit.py.
    x, mask, params = encoder_inputs
    y_ref, (gp_ref, gx_ref) = encoder_reference
    scanned = stack_blocks(params, 2)
    y, (gp, gx) = forward_and_grads(encoder(scan=True), scanned, x, mask)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, atol=1e-5)
    assert_trees_close(gp, stack_blocks(gp_ref, 2))


@pytest.mark.parametrize("policy", sorted(layers.REMAT_POLICIES))
def test_remat_encoder_matches_plain(encoder_inputs, encoder_reference, policy):
    x, mask, params = encoder_inputs
    y_ref, grads_ref = encoder_reference
    model = encoder(remat=True, remat_policy=policy)
    y, grads = forward_and_grads(model, params, x, mask)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    assert_trees_close(grads, grads_ref)
    # The policy reaches the checkpoint: the traced gradient names it.
    grad_fn = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, mask)[0]))
    jaxpr = str(jax.make_jaxpr(grad_fn)(params))
    want = layers.REMAT_POLICIES[policy]
    assert "remat" in jaxpr
    assert f"policy={want!r}" in jaxpr if want is not None else "policy=None" in jaxpr


@pytest.mark.parametrize("remat", [False, True])
def test_jit_blocks_trace_one_block_and_compute_the_same(encoder_inputs, remat):
    """The shared block trace (the default) against per-layer tracing: one traced block call
    instead of one per layer, the same initial parameters (init traces every layer), and the
    same outputs and gradients from the same parameters. (Dropout masks differ: flax derives
    a jitted block's RNGs by another route; each layer still draws its own.)"""
    x, mask, _ = encoder_inputs
    params = random_params(encoder(depth=3, jit_blocks=False), x, mask)["params"]
    results, traces, inits = {}, {}, {}
    for jit_blocks in (False, True):
        model = encoder(depth=3, dropout=0.3, remat=remat, jit_blocks=jit_blocks)
        calls = []

        def count_blocks(next_fun, args, kwargs, context, calls=calls):
            # The block's own body (transform wrappers show up as other methods).
            if isinstance(context.module, layers.EncoderBlock) and (
                context.method_name == "__call__"
            ):
                calls.append(context.module.name)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(count_blocks):
            results[jit_blocks] = forward_and_grads(model, params, x, mask)
        traces[jit_blocks] = len(calls)
        inits[jit_blocks] = nn.meta.unbox(model.init(jax.random.key(1), x, mask)["params"])
        # Dropout is on in training: another key, another output.
        train = lambda key, model=model: model.apply(  # noqa: E731
            {"params": params}, x, mask, train=True, rngs={"dropout": jax.random.key(key)}
        )[0]
        assert not np.allclose(train(1), train(2), atol=1e-3)
    assert traces == {False: 3, True: 1}
    jax.tree.map(np.testing.assert_array_equal, inits[True], inits[False])
    y_ref, grads_ref = results[False]
    y, grads = results[True]
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    assert_trees_close(grads, grads_ref, atol=1e-6)


def test_unknown_remat_policy_is_named(encoder_inputs):
    x, mask, params = encoder_inputs
    with pytest.raises(ValueError, match=r"Unknown remat_policy 'dots'.*'save_dots'"):
        encoder(remat=True, remat_policy="dots").apply({"params": params}, x, mask)


def test_encoder_aux_dropout_and_axes(encoder_inputs, encoder_reference):
    x, mask, params = encoder_inputs
    y_eval = encoder_reference[0]
    rngs = {"dropout": jax.random.key(2, impl="rbg")}
    for scan in (False, True):
        model = encoder(scan=scan, dropout=0.5)
        abstract = jax.eval_shape(model.init, jax.random.key(1), x, mask)
        n = assert_logically_partitioned(abstract)
        # 16 leaves per block (2 norms, 4 attention denses, 2 MLP denses), final norm 2.
        assert n == (16 if scan else 2 * 16) + 2
        variables = {"params": stack_blocks(params, 2) if scan else params}
        apply = jax.jit(model.apply, static_argnames="train")
        y_train, aux = apply(variables, x, mask, train=True, rngs=rngs)
        assert y_train.shape == y_eval.shape
        assert not np.allclose(y_train, y_eval, atol=1e-3)
        assert ("block_outputs" in aux) == (not scan)
        if scan:
            kernel = abstract["params"]["blocks"]["mlp"]["fc1"]["kernel"]
            assert kernel.names == ("layers", "embed", "mlp")
            assert kernel.value.shape == (2, 32, 64)
        else:
            # Dropout is off outside training: eval equals the dropout-free reference.
            np.testing.assert_array_equal(apply(variables, x, mask)[0], y_eval)
            kernel = abstract["params"]["block_0"]["attn"]["query"]["kernel"]
            assert kernel.names == ("embed", "heads", "kv")
    model = encoder(final_norm=False)
    unnormed = {k: v for k, v in params.items() if k != "encoder_norm"}
    y, aux = jax.jit(model.apply)({"params": unnormed}, x, mask)
    assert len(aux["block_outputs"]) == 2
    np.testing.assert_array_equal(aux["block_outputs"][-1], y)


def reference_block(p, x, mask, *, post_norm: bool, eps: float = 1e-6) -> np.ndarray:
    """float64 numpy `EncoderBlock` (exact GELU, no causality): x [B, L, D], mask [B, 1, 1, L]."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)

    def ln(name, h):
        mu = h.mean(-1, keepdims=True)
        var = ((h - mu) ** 2).mean(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + eps) * p[name]["scale"] + p[name]["bias"]

    def attn(h):
        a = p["attn"]
        q, k, v = (
            np.einsum("bld,dhk->blhk", h, a[n]["kernel"]) + a[n]["bias"]
            for n in ("query", "key", "value")
        )
        logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
        logits = np.where(np.asarray(mask), logits, -np.inf)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("bhts,bshk->bthk", w, v)
        return np.einsum("bthk,hkd->btd", o, a["out"]["kernel"]) + a["out"]["bias"]

    def mlp(h):
        m = p["mlp"]
        h = h @ m["fc1"]["kernel"] + m["fc1"]["bias"]
        h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
        return h @ m["fc2"]["kernel"] + m["fc2"]["bias"]

    x = np.asarray(x, np.float64)
    if post_norm:
        x = ln("ln_1", x + attn(x))
        return ln("ln_2", x + mlp(x))
    x = x + attn(ln("ln_1", x))
    return x + mlp(ln("ln_2", x))


@pytest.mark.parametrize("post_norm", [False, True])
def test_encoder_block_matches_reference(encoder_inputs, post_norm):
    x, mask, _ = encoder_inputs
    block = layers.EncoderBlock(num_heads=2, mlp_dim=64, post_norm=post_norm)
    variables = random_params(block, x, mask)
    # Same parameter tree in both layouts.
    assert param_names(block, x, mask) == {n.removeprefix("/") for n in block_param_names("")}
    y = jax.jit(block.apply)(variables, x, mask)
    expected = reference_block(variables["params"], x, mask, post_norm=post_norm)
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)
    if post_norm:  # a post-LN output is normalised: zero mean per token before the affine
        ln_2 = variables["params"]["ln_2"]
        centred = (np.asarray(y) - ln_2["bias"]) / ln_2["scale"]
        np.testing.assert_allclose(centred.mean(-1), 0.0, atol=1e-5)


def test_post_norm_encoder_has_no_final_norm(encoder_inputs):
    x, mask, params = encoder_inputs
    with pytest.raises(ValueError, match="final_norm=False"):
        jax.eval_shape(encoder(post_norm=True).init, jax.random.key(0), x, mask)
    model = encoder(post_norm=True, final_norm=False, causal=False)
    unnormed = {k: v for k, v in params.items() if k != "encoder_norm"}
    assert param_names(model, x, mask) == set(traverse_util.flatten_dict(unnormed, sep="/"))
    y, aux = jax.jit(model.apply)({"params": unnormed}, x, mask)
    h = x
    for i in range(2):
        h = reference_block(unnormed[f"block_{i}"], h, mask, post_norm=True)
        np.testing.assert_allclose(aux["block_outputs"][i], h, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(aux["block_outputs"][-1], y)


def test_map_head_pools_and_ignores_masked_tokens():
    x = normal(0, 2, 5, 32)
    head = layers.MAPHead(num_heads=2, mlp_dim=64)
    assert_logically_partitioned(jax.eval_shape(head.init, jax.random.key(1), x))
    variables = random_params(head, x)
    apply = jax.jit(head.apply)
    valid = np.arange(5) < 3
    valid = np.stack([valid, valid])
    pooled = apply(variables, x, valid)
    assert pooled.shape == (2, 32)
    noisy = x.copy()
    noisy[:, 3:] = 100.0
    np.testing.assert_allclose(apply(variables, noisy, valid), pooled, atol=1e-6)
    np.testing.assert_allclose(apply(variables, x[:, :3]), pooled, atol=1e-5)


def test_embed_matches_flax_embed_and_keeps_its_parameter():
    ids = np.array([[1, 4, 0], [2, 2, 5]], np.int32)
    init = layers.part(nn.initializers.normal(1.0), ("vocab", "embed"))
    ours, theirs = (cls(6, 4, embedding_init=init) for cls in (layers.Embed, nn.Embed))
    variables = random_params(ours, ids)
    assert jax.tree.structure(variables) == jax.tree.structure(random_params(theirs, ids))
    out = jax.jit(ours.apply)(variables, ids)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, jax.jit(theirs.apply)(variables, ids))
    np.testing.assert_array_equal(out[1, 0], variables["params"]["embedding"][2])
    half = ours.clone(dtype=jnp.bfloat16).apply(variables, ids)
    assert half.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="integer"):
        ours.apply(variables, ids.astype(np.float32))
