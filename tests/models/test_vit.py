"""Tests for models/vit.py, models/variants.py and the models registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import vit
from models.variants import decode_variant
from tests.models.test_layers import (
    assert_logically_partitioned,
    block_param_names,
    map_head_param_names,
    param_names,
    random_params,
    sharded_vs_single,
)

IMAGES = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)


def init_apply(model, images=IMAGES):
    """(boxed abstract variables, host-drawn params, output, aux)."""
    abstract = jax.eval_shape(model.init, jax.random.key(1), images)
    variables = random_params(model, images)
    out, aux = jax.jit(model.apply)(variables, images)
    return abstract, variables, out, aux


def test_decode_variant():
    assert decode_variant("B/16") == {
        "width": 768,
        "depth": 12,
        "mlp_dim": 3072,
        "num_heads": 12,
        "patch_size": 16,
    }
    assert decode_variant("B") == {"width": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 12}
    assert decode_variant("mu/8") == {
        "width": 32,
        "depth": 1,
        "mlp_dim": 128,
        "num_heads": 2,
        "patch_size": 8,
    }
    expected = {
        "Ti": (192, 12, 768, 3),
        "S": (384, 12, 1536, 6),
        "M": (512, 12, 2048, 8),
        "L": (1024, 24, 4096, 16),
    }
    for name, (w, d, m, h) in expected.items():
        cfg = decode_variant(f"{name}/14")
        assert (cfg["width"], cfg["depth"], cfg["mlp_dim"], cfg["num_heads"]) == (w, d, m, h)
        assert cfg["patch_size"] == 14
    with pytest.raises(ValueError, match="Ti.*S.*B"):
        decode_variant("XL/16")
    with pytest.raises(ValueError, match="patch size"):
        decode_variant("B/x")


@pytest.mark.parametrize(
    "pool_type,posemb",
    [
        ("cls", "learn"),
        ("gap", "sincos2d"),
        ("map", "learn"),
        ("map", "sincos2d"),
        ("none", "learn"),
    ],
)
def test_shapes_and_logical_axes(pool_type, posemb):
    model = vit.ViT(variant="mu/8", pool_type=pool_type, posemb=posemb, num_classes=10)
    abstract, variables, out, aux = init_apply(model)
    assert_logically_partitioned(abstract)
    params = abstract["params"]
    assert aux["tokens"].shape == (2, 4, 32)  # (16 / 8) ** 2 patches, cls excluded
    if pool_type == "none":
        assert aux["pre_logits"].shape == (2, 4, 32)
        assert out.shape == (2, 4, 10)
    else:
        assert aux["pre_logits"].shape == (2, 32)
        assert out.shape == (2, 10)
    assert ("cls" in params) == (pool_type == "cls")
    assert ("map_head" in params) == (pool_type == "map")
    assert ("pos_embedding" in params) == (posemb == "learn")
    if posemb == "learn":
        assert params["pos_embedding"].value.shape == (1, 4 + (pool_type == "cls"), 32)
    head = variables["params"]["head"]
    np.testing.assert_allclose(
        out, aux["pre_logits"] @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5
    )


def test_parameter_names_are_stable():
    model = vit.ViT(variant="mu/8", pool_type="map", num_classes=4)
    stem = {"embedding/kernel", "embedding/bias", "pos_embedding"}
    top = {"encoder/encoder_norm/scale", "encoder/encoder_norm/bias", "head/kernel", "head/bias"}
    assert param_names(model, IMAGES) == (
        stem | top | block_param_names("encoder/block_0") | map_head_param_names()
    )
    clip = model.clone(pool_type="cls", ln_pre=True, scan=True)
    assert param_names(clip, IMAGES) == (
        stem | top | block_param_names("encoder/blocks") | {"cls", "ln_pre/scale", "ln_pre/bias"}
    )


def test_variant_overrides_fields_and_no_head():
    model = vit.ViT(variant="mu/4", width=64, patch_size=16, pool_type="gap")
    assert model.config() == {
        "width": 32,
        "depth": 1,
        "mlp_dim": 128,
        "num_heads": 2,
        "patch_size": 4,
    }
    _, variables, out, aux = init_apply(model)
    assert "head" not in variables["params"]
    assert out.shape == (2, 32)
    np.testing.assert_array_equal(out, aux["pre_logits"])
    np.testing.assert_allclose(out, aux["tokens"].mean(1), atol=1e-6)
    assert aux["tokens"].shape == (2, 16, 32)
    # Unscanned depth-1 encoder exposes its block output.
    assert len(aux["block_outputs"]) == 1


def test_clip_style_tower():
    model = vit.ViT(
        variant="mu/8",
        pool_type="cls",
        ln_pre=True,
        patch_bias=False,
        num_classes=16,
        head_bias=False,
        activation="quick_gelu",
        norm_eps=1e-5,
    )
    _, variables, out, aux = init_apply(model)
    params = variables["params"]
    assert set(params) == {"embedding", "cls", "pos_embedding", "ln_pre", "encoder", "head"}
    assert set(params["embedding"]) == {"kernel"}
    assert set(params["head"]) == {"kernel"}
    assert params["pos_embedding"].shape == (1, 5, 32)  # covers the cls token
    np.testing.assert_allclose(out, aux["pre_logits"] @ params["head"]["kernel"], atol=1e-5)
    # Pooled = CLIP's post-LayerNorm of the cls token output by the last block.
    cls = np.asarray(aux["block_outputs"][-1][:, 0], np.float64)
    norm = params["encoder"]["encoder_norm"]
    normed = (cls - cls.mean(-1, keepdims=True)) / np.sqrt(cls.var(-1, keepdims=True) + 1e-5)
    expected = normed * norm["scale"] + norm["bias"]
    np.testing.assert_allclose(aux["pre_logits"], expected, atol=1e-5)


def test_scanned_remat_vit_matches_unscanned():
    model = vit.ViT(
        width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8, pool_type="cls", ln_pre=True
    )

    def to_scanned(params):
        enc = dict(params["encoder"])
        blocks = [enc.pop(f"block_{i}") for i in range(2)]
        enc["blocks"] = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
        return dict(params, encoder=enc)

    def value_and_grad(m, p):
        loss = lambda p: jnp.sum(m.apply({"params": p}, IMAGES)[0] ** 2)
        return jax.jit(jax.value_and_grad(loss))(p)

    params = random_params(model, IMAGES)["params"]
    ref, g_ref = value_and_grad(model, params)
    val, g = value_and_grad(model.clone(scan=True, remat=True), to_scanned(params))
    np.testing.assert_allclose(val, ref, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g, to_scanned(g_ref)
    )


def test_dropout_only_in_training():
    model = vit.ViT(variant="mu/8", dropout=0.3, pool_type="gap")
    variables = random_params(model, IMAGES)
    apply = jax.jit(model.apply, static_argnames="train")
    eval_out = apply(variables, IMAGES)[0]
    # Outside training the output is the dropout-free model's.
    plain = jax.jit(model.clone(dropout=0.0).apply)(variables, IMAGES)[0]
    np.testing.assert_allclose(eval_out, plain, atol=1e-6)
    train_out = apply(
        variables, IMAGES, train=True, rngs={"dropout": jax.random.key(2, impl="rbg")}
    )[0]
    assert train_out.shape == eval_out.shape
    assert not np.allclose(train_out, eval_out)


def test_errors():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        jax.eval_shape(vit.ViT(variant="mu/5").init, jax.random.key(0), IMAGES)
    with pytest.raises(ValueError, match="pool_type"):
        jax.eval_shape(vit.ViT(variant="mu/8", pool_type="max").init, jax.random.key(0), IMAGES)
    with pytest.raises(ValueError, match="posemb"):
        jax.eval_shape(vit.ViT(variant="mu/8", posemb="rope").init, jax.random.key(0), IMAGES)


def test_sharded_matches_single_device():
    model = vit.ViT(variant="mu/8", pool_type="map", num_classes=8, scan=True)
    images = np.random.default_rng(3).uniform(size=(8, 16, 16, 3)).astype(np.float32)
    out, ref, variables = sharded_vs_single(model, images)
    assert out.shape == (8, 8)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    spec = variables["params"]["embedding"]["kernel"].value.sharding.spec
    assert spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
