"""The two-tower contrastive objective: shapes, errors, analytic FLOPs (what MFU divides)."""

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
