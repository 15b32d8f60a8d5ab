"""The two-tower contrastive objective: shapes, errors, inference scores, analytic FLOPs (what
MFU divides)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from objectives.contrastive import TwoTower

TOWER = dict(width=32, depth=1, mlp_dim=64, num_heads=2, num_classes=16)
IMAGE = dict(TOWER, patch_size=8, pool_type="gap")
TEXT = dict(TOWER, vocab_size=64, max_len=8, pool_type="eos", eos_id=2)
BATCH = {"image": jnp.zeros((4, 32, 32, 3)), "tokens": jnp.ones((4, 8), jnp.int32)}
SHAPES = {"image": (32, 32, 3), "tokens": (8,)}

# By hand, per example. Image: 16 patches of 8*8*3 values into width 32; one layer over 16
# tokens: q/k/v/out projections 4 * 2*16*32*32, scores and mixing 2 * 2*16*16*32, MLP
# 2 * 2*16*32*64; the head 2*32*16 on the pooled vector.
IMAGE_FORWARD = (
    2 * 16 * 192 * 32
    + 4 * 2 * 16 * 32 * 32
    + 2 * 2 * 16 * 16 * 32
    + (2 * 2 * 16 * 32 * 64)
    + 2 * 32 * 16
)
# Text: the same layer over 8 tokens (the embedding is a gather) plus the head.
TEXT_FORWARD = 4 * 2 * 8 * 32 * 32 + 2 * 2 * 8 * 8 * 32 + 2 * 2 * 8 * 32 * 64 + 2 * 32 * 16


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_loss_and_embeddings(loss):
    model = TwoTower(image=IMAGE, text=TEXT, loss=loss, loss_impl="dense")
    params = model.init(jax.random.key(0), BATCH)["params"]
    assert set(params) == {"img", "txt", "log_temp"} | (
        {"logit_bias"} if loss == "sigmoid" else set()
    )
    loss_value, metrics = model.apply({"params": params}, BATCH)
    assert np.isfinite(loss_value) and {"accuracy_i2t", "accuracy_t2i", "scale"} <= set(metrics)
    emb = model.apply({"params": params}, BATCH["image"], method="embed_image")
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def _unit_rows(rng, n, d=16):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _params_with(loss, log_temp, bias=None):
    model = TwoTower(image=IMAGE, text=TEXT, loss=loss, loss_impl="dense")
    params = dict(model.init(jax.random.key(0), BATCH)["params"])
    params["log_temp"] = jnp.float32(log_temp)
    if bias is not None:
        params["logit_bias"] = jnp.float32(bias)
    return model, params


def _scores(model, params, image_emb, text_emb):
    variables = {"params": params}
    logits = model.apply(variables, image_emb, text_emb, method="match_logits")
    probs = model.apply(variables, image_emb, text_emb, method="match_probabilities")
    return np.asarray(logits), np.asarray(probs)


@pytest.mark.parametrize("temperature, scale", [(50.0, 50.0), (1000.0, 100.0)])
def test_softmax_match_scores_use_the_losss_capped_scale(temperature, scale):
    rng = np.random.default_rng(1)
    image_emb, text_emb = _unit_rows(rng, 3), _unit_rows(rng, 5)
    model, params = _params_with("softmax", math.log(temperature))
    logits, probs = _scores(model, params, image_emb, text_emb)
    want = scale * image_emb.astype(np.float64) @ text_emb.T.astype(np.float64)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-4)
    exp = np.exp(want - want.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, exp / exp.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_sigmoid_match_scores_are_uncapped_and_biased():
    # exp(log_temp) = 300 is above CLIP's cap of 100: SigLIP's scale is never capped.
    rng = np.random.default_rng(2)
    image_emb, text_emb = _unit_rows(rng, 4), _unit_rows(rng, 3)
    model, params = _params_with("sigmoid", math.log(300.0), bias=-7.0)
    logits, probs = _scores(model, params, image_emb, text_emb)
    want = 300.0 * image_emb.astype(np.float64) @ text_emb.T.astype(np.float64) - 7.0
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-want)), rtol=1e-4, atol=1e-6)
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent, not a distribution


def test_match_scores_refuse_mismatched_widths():
    model, params = _params_with("softmax", 0.0)
    with pytest.raises(ValueError, match="width 16 but text embeddings 8"):
        model.apply({"params": params}, np.ones((2, 16)), np.ones((3, 8)), method="match_logits")


@pytest.mark.parametrize("loss, bias", [("softmax", None), ("sigmoid", -10.0)])
def test_initial_temperature_and_bias(loss, bias):
    """What the objective initialises: CLIP's 1/0.07, SigLIP's 10 and bias -10."""
    model = TwoTower(image=IMAGE, text=TEXT, loss=loss)
    params = model.init(jax.random.key(0), BATCH)["params"]
    want = {"softmax": 1 / 0.07, "sigmoid": 10.0}[loss]
    np.testing.assert_allclose(math.exp(float(params["log_temp"])), want, rtol=1e-6)
    if bias is None:
        assert "logit_bias" not in params
    else:
        assert float(params["logit_bias"]) == bias
    custom = TwoTower(image=IMAGE, text=TEXT, loss=loss, temperature_init=30.0)
    log_temp = custom.init(jax.random.key(0), BATCH)["params"]["log_temp"]
    np.testing.assert_allclose(float(log_temp), math.log(30.0), rtol=1e-6)


def test_tower_width_mismatch_is_a_clear_error():
    model = TwoTower(image=IMAGE, text=dict(TEXT, num_classes=8))
    with pytest.raises(ValueError, match="width 16 but text embeddings 8.*same `num_classes`"):
        model.init(jax.random.key(0), BATCH)


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="loss must be one of"):
        TwoTower(image=IMAGE, text=TEXT, loss="sigmod").init(jax.random.key(0), BATCH)


def test_train_flops_by_hand():
    model = TwoTower(image=IMAGE, text=TEXT)
    assert model.train_flops_per_example(SHAPES) == {"float32": 3 * (IMAGE_FORWARD + TEXT_FORWARD)}


def test_lit_locked_tower_costs_one_forward_pass():
    model = TwoTower(image=IMAGE, text=TEXT)
    lit = model.train_flops_per_example(SHAPES, frozen={"img"})
    assert lit == {"float32": IMAGE_FORWARD + 3 * TEXT_FORWARD}


def test_flops_are_keyed_by_each_towers_matmul_dtype():
    model = TwoTower(image=dict(IMAGE, dtype="bfloat16"), text=TEXT)
    assert model.train_flops_per_example(SHAPES) == {
        "bfloat16": 3 * IMAGE_FORWARD,
        "float32": 3 * TEXT_FORWARD,
    }
