"""Tests for models/text.py: pooling, padding invariance, causality, BERT/SigLIP options,
sharding."""

import jax
import numpy as np
import pytest

from models import layers, text
from tests.models.test_layers import (
    assert_logically_partitioned,
    block_param_names,
    map_head_param_names,
    param_names,
    random_params,
    sharded_vs_single,
)

VOCAB, MAX_LEN, PAD, EOS = 50, 12, 0, 3


def make_model(**kw):
    cfg = dict(variant="mu", vocab_size=VOCAB, max_len=MAX_LEN, pad_id=PAD, eos_id=EOS)
    return text.TextTransformer(**(cfg | kw))


def tokens_with_padding(lengths, total, seed=0):
    """Rows of random ids in [4, VOCAB) ending in EOS at position length-1, then PAD."""
    rng = np.random.default_rng(seed)
    toks = np.full((len(lengths), total), PAD, np.int32)
    for i, n in enumerate(lengths):
        toks[i, :n] = rng.integers(4, VOCAB, n)
        toks[i, n - 1] = EOS
    return toks


TOKENS = tokens_with_padding([5, 8], 8)


@pytest.mark.parametrize("pool_type", text.POOL_TYPES)
def test_shapes_axes_and_padding_invariance(pool_type):
    causal = pool_type in ("eos", "last")  # bidirectional for the others
    model = make_model(pool_type=pool_type, causal=causal, num_classes=6)
    abstract = jax.eval_shape(model.init, jax.random.key(0), TOKENS)
    assert_logically_partitioned(abstract)
    emb = abstract["params"]["token_embedding"]["embedding"]
    assert emb.names == ("vocab", "embed") and emb.value.shape == (VOCAB, 32)
    assert abstract["params"]["pos_embedding"].value.shape == (MAX_LEN, 32)
    assert ("map_head" in abstract["params"]) == (pool_type == "map")

    variables = random_params(model, TOKENS)
    apply = jax.jit(model.apply)
    out, aux = apply(variables, TOKENS)
    assert out.shape == (2, 6)
    assert aux["pre_logits"].shape == (2, 32)
    assert aux["tokens"].shape == (2, 8, 32)
    head = variables["params"]["head"]
    np.testing.assert_allclose(
        out, aux["pre_logits"] @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5
    )
    tokens = np.asarray(aux["tokens"])
    if pool_type == "final":  # position L-1 whatever it holds: not padding invariant
        np.testing.assert_allclose(aux["pre_logits"], tokens[:, -1], atol=1e-6)
        return
    # Appending pad tokens leaves the pooled output unchanged.
    padded = np.pad(TOKENS, ((0, 0), (0, 4)), constant_values=PAD)
    out_padded, aux_padded = apply(variables, padded)
    np.testing.assert_allclose(aux_padded["pre_logits"], aux["pre_logits"], atol=1e-5)
    np.testing.assert_allclose(out_padded, out, atol=1e-5)
    if pool_type in ("eos", "last"):
        np.testing.assert_allclose(aux["pre_logits"], tokens[[0, 1], [4, 7]], atol=1e-6)
    elif pool_type == "first":
        np.testing.assert_allclose(aux["pre_logits"], tokens[:, 0], atol=1e-6)
    elif pool_type == "mean":
        expected = [tokens[0, :5].mean(0), tokens[1].mean(0)]
        np.testing.assert_allclose(aux["pre_logits"], expected, atol=1e-5)


def test_parameter_names_are_stable():
    model = make_model(pool_type="map", causal=False, num_classes=6)
    assert param_names(model, TOKENS) == (
        {"token_embedding/embedding", "pos_embedding", "head/kernel", "head/bias"}
        | {"encoder/encoder_norm/scale", "encoder/encoder_norm/bias"}
        | block_param_names("encoder/block_0")
        | map_head_param_names()
    )


def test_eos_pooling_picks_first_eos_else_last_token():
    toks = np.array([[5, 6, EOS, 7, EOS, PAD], [5, 6, 7, 8, PAD, PAD]], np.int32)
    model = make_model(pool_type="eos", causal=False)
    variables = random_params(model, toks)
    _, aux = jax.jit(model.apply)(variables, toks)
    tokens = np.asarray(aux["tokens"])
    np.testing.assert_allclose(aux["pre_logits"], tokens[[0, 1], [2, 3]], atol=1e-6)
    # eos_id=None: always the last non-pad token.
    model = make_model(pool_type="eos", causal=False, eos_id=None)
    _, aux = jax.jit(model.apply)(variables, toks)
    tokens = np.asarray(aux["tokens"])
    np.testing.assert_allclose(aux["pre_logits"], tokens[[0, 1], [4, 3]], atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_causal_and_bidirectional_attention(scan):
    toks = tokens_with_padding([8, 8], 8, seed=1)
    changed = toks.copy()
    changed[:, 5] = (changed[:, 5] + 1 - 4) % (VOCAB - 4) + 4  # a different non-special id
    causal = make_model(variant=None, width=32, depth=2, mlp_dim=64, num_heads=2, scan=scan)
    variables = random_params(causal, toks)
    _, aux = jax.jit(causal.apply)(variables, toks)
    _, aux_changed = jax.jit(causal.apply)(variables, changed)
    before, after = np.asarray(aux["tokens"]), np.asarray(aux_changed["tokens"])
    np.testing.assert_allclose(after[:, :5], before[:, :5], atol=1e-6)
    assert not np.allclose(after[:, 5:], before[:, 5:], atol=1e-3)
    if scan:
        return
    bidir = causal.clone(causal=False)
    _, aux = jax.jit(bidir.apply)(variables, toks)
    _, aux_changed = jax.jit(bidir.apply)(variables, changed)
    assert not np.allclose(aux_changed["tokens"][:, :5], aux["tokens"][:, :5], atol=1e-3)


def test_quick_gelu_and_no_head():
    model = make_model(activation="quick_gelu", pool_type="mean", causal=False)
    variables = random_params(model, TOKENS)
    out, aux = jax.jit(model.apply)(variables, TOKENS)
    assert "head" not in variables["params"]
    np.testing.assert_array_equal(out, aux["pre_logits"])
    gelu = model.clone(activation="gelu")
    out_gelu, _ = jax.jit(gelu.apply)(variables, TOKENS)
    assert not np.allclose(out, out_gelu, atol=1e-4)


BERT = dict(
    causal=False,
    post_norm=True,
    final_norm=False,
    embed_norm=True,
    type_vocab_size=2,
    norm_eps=1e-12,
    pool_type="mean",
)


def test_bert_options_parameters_and_embeddings():
    model = make_model(**BERT)
    abstract = jax.eval_shape(model.init, jax.random.key(0), TOKENS)
    assert_logically_partitioned(abstract)
    table = abstract["params"]["type_embedding"]["embedding"]
    assert table.names == ("vocab", "embed") and table.value.shape == (2, 32)
    assert abstract["params"]["embedding_norm"]["scale"].names == ("embed",)
    assert param_names(model, TOKENS) == (
        {"token_embedding/embedding", "pos_embedding", "type_embedding/embedding"}
        | {"embedding_norm/scale", "embedding_norm/bias"}
        | block_param_names("encoder/block_0")
    )
    # The encoder sees LN(token + position + type-0 embeddings) and a key padding mask.
    p = random_params(model, TOKENS)["params"]
    _, aux = jax.jit(model.apply)({"params": p}, TOKENS)
    emb = (
        np.asarray(p["token_embedding"]["embedding"])[TOKENS]
        + np.asarray(p["pos_embedding"])[:8]
        + np.asarray(p["type_embedding"]["embedding"])[0]
    )
    mu, var = emb.mean(-1, keepdims=True), emb.var(-1, keepdims=True)
    emb = (emb - mu) / np.sqrt(var + 1e-12) * p["embedding_norm"]["scale"]
    emb = emb + p["embedding_norm"]["bias"]
    size = {k: v for k, v in model.config().items() if k != "width"}
    encoder = layers.Encoder(**size, post_norm=True, final_norm=False, norm_eps=1e-12)
    mask = (TOKENS != PAD)[:, None, None, :]
    expected, _ = jax.jit(encoder.apply)({"params": p["encoder"]}, emb, mask)
    np.testing.assert_allclose(aux["tokens"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="final_norm=False"):
        jax.eval_shape(make_model(**(BERT | {"final_norm": True})).init, jax.random.key(0), TOKENS)


def test_unmasked_padding_is_attended_and_pooled():
    masked = make_model(causal=False, pool_type="mean")
    unmasked = masked.clone(mask_padding=False)
    variables = random_params(masked, TOKENS)
    _, aux = jax.jit(masked.apply)(variables, TOKENS)
    _, aux_open = jax.jit(unmasked.apply)(variables, TOKENS)
    # Row 1 has no padding: identical. Row 0 (5 tokens + 3 pads) changes.
    np.testing.assert_allclose(aux_open["tokens"][1], aux["tokens"][1], atol=1e-6)
    assert not np.allclose(aux_open["tokens"][0, :5], aux["tokens"][0, :5], atol=1e-3)
    np.testing.assert_allclose(aux_open["pre_logits"], aux_open["tokens"].mean(1), atol=1e-6)
    # SigLIP's tower: pool the final position, no mask; padding then changes the output.
    siglip = unmasked.clone(pool_type="final", activation="gelu_tanh")
    _, aux = jax.jit(siglip.apply)(variables, TOKENS)
    np.testing.assert_allclose(aux["pre_logits"], aux["tokens"][:, -1], atol=1e-6)
    padded = np.pad(TOKENS, ((0, 0), (0, 2)), constant_values=PAD)
    _, aux_padded = jax.jit(siglip.apply)(variables, padded)
    assert not np.allclose(aux_padded["pre_logits"], aux["pre_logits"], atol=1e-3)


def test_errors():
    too_long = np.ones((1, MAX_LEN + 1), np.int32)
    with pytest.raises(ValueError, match="exceeds max_len=12"):
        jax.eval_shape(make_model().init, jax.random.key(0), too_long)
    with pytest.raises(ValueError, match="pool_type"):
        jax.eval_shape(make_model(pool_type="max").init, jax.random.key(0), TOKENS)
    with pytest.raises(ValueError, match="Unknown model variant"):
        jax.eval_shape(make_model(variant="XXL").init, jax.random.key(0), TOKENS)


def test_sharded_matches_single_device():
    model = make_model(pool_type="map", causal=False, num_classes=8, vocab_size=64)
    toks = tokens_with_padding([3, 4, 5, 6, 7, 8, 8, 2], 8, seed=2)
    out, ref, variables = sharded_vs_single(model, toks, (2, 2, 2))
    assert out.shape == (8, 8)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    spec = variables["params"]["token_embedding"]["embedding"].value.sharding.spec
    assert spec == jax.sharding.PartitionSpec("tensor", "fsdp")
