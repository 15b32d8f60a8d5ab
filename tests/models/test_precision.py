"""Mixed-precision matmuls: bf16 inputs, float32 accumulation, forward and backward."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import precision, vit

BF16 = jnp.bfloat16
# (lhs shape, rhs shape, dimension numbers): a Dense, a DenseGeneral over two axes, batch dims.
DOTS = [
    ((4, 6, 8), (8, 5), (((2,), (0,)), ((), ()))),
    ((4, 6, 3, 2), (3, 2, 7), (((2, 3), (0, 1)), ((), ()))),
    ((2, 5, 4), (2, 4, 3), (((2,), (1,)), ((0,), (0,)))),
]


def _normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _rounded(x):
    return x.astype(BF16).astype(jnp.float32)


@pytest.mark.parametrize("lhs_shape, rhs_shape, dims", DOTS)
def test_fp32_dot_general_is_lax_dot_general(lhs_shape, rhs_shape, dims):
    a, b = _normal(0, lhs_shape), _normal(1, rhs_shape)
    want = jax.lax.dot_general(a, b, dims)
    np.testing.assert_array_equal(precision.dot_general(None)(a, b, dims), want)

    def loss(dot):
        return lambda a, b: (dot(a, b, dims) ** 2).sum()

    got = jax.grad(loss(precision.dot_general(None)), (0, 1))(a, b)
    ref = jax.grad(loss(jax.lax.dot_general), (0, 1))(a, b)
    for x, y in zip(got, ref, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)


@pytest.mark.parametrize("lhs_shape, rhs_shape, dims", DOTS)
def test_bf16_dot_general_is_the_f32_product_of_rounded_inputs(lhs_shape, rhs_shape, dims):
    """Forward: the exact float32 sum of bf16-rounded inputs (nothing rounded mid-sum).
    Backward: the float32 products of the bf16-rounded cotangent and inputs."""
    a, b = _normal(0, lhs_shape), _normal(1, rhs_shape)
    dot = precision.dot_general(BF16)
    out = dot(a, b, dims)
    assert out.dtype == jnp.float32
    ref = jax.lax.dot_general(_rounded(a), _rounded(b), dims, precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

    g = _normal(2, out.shape)
    _, vjp = jax.vjp(lambda a, b: dot(a, b, dims), a, b)
    da, db = vjp(g)
    _, ref_vjp = jax.vjp(
        lambda a, b: jax.lax.dot_general(a, b, dims, precision=jax.lax.Precision.HIGHEST),
        _rounded(a),
        _rounded(b),
    )
    ref_da, ref_db = ref_vjp(_rounded(g))
    # The gradients themselves are rounded to bf16 (the dtype of the cast inputs).
    np.testing.assert_allclose(da, ref_da, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(db, ref_db, rtol=1e-2, atol=1e-2)
    assert da.dtype == db.dtype == jnp.float32
    # And they are not the fp32 gradients: the policy really computed in bf16.
    _, f32_vjp = jax.vjp(lambda a, b: jax.lax.dot_general(a, b, dims), a, b)
    assert not np.allclose(da, f32_vjp(g)[0], rtol=1e-6, atol=1e-6)


def _dots(hlo: str) -> list[str]:
    return [line for line in hlo.splitlines() if "stablehlo.dot_general" in line]


@pytest.mark.parametrize("jit_blocks", [False, True])
def test_every_matmul_of_a_bf16_mixed_train_step_takes_bf16_and_returns_f32(jit_blocks):
    """The whole forward and backward of a ViT: no matmul in float32 (slow), none with a
    bf16 result (summed in bf16 on some backends; ~6x slower on XLA:CPU)."""
    model = vit.ViT(
        width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8, num_classes=8,
        dtype=jnp.float32, matmul_dtype=BF16, jit_blocks=jit_blocks,
    )  # fmt: skip
    images = jnp.ones((2, 32, 32, 3))
    params = model.init(jax.random.key(0), images)["params"]

    def loss(p):
        return (model.apply({"params": p}, images)[0] ** 2).sum()

    hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
    dots = _dots(hlo)
    # 2 blocks x (q, k, v, out, 2 attention, 2 MLP) + head = 17 forward matmuls, and two
    # backward ones for each (one for the input gradient of the first layer is pruned). With
    # jit_blocks the two blocks share one lowered function: 9 forward matmuls in the text.
    assert len(dots) >= (9 if jit_blocks else 17) * 2
    for line in dots:
        types = re.findall(r"tensor<[^>]*x(\w+)>", line.split(":")[-1])
        assert types[:2] == ["bf16", "bf16"] and types[-1] == "f32", line
    grads = jax.grad(loss)(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


@pytest.mark.parametrize("name", ["bf16_mixed", "bf16_act"])
def test_policies_stay_close_to_fp32_on_a_vit(name):
    fields = precision.policy_fields(name)
    kw = dict(width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=8, num_classes=16)
    ref_model = vit.ViT(**kw)
    model = vit.ViT(**kw, **fields)
    images = _normal(3, (4, 32, 32, 3))
    params = ref_model.init(jax.random.key(0), images)["params"]
    want, _ = ref_model.apply({"params": params}, images)
    got, _ = model.apply({"params": params}, images)
    assert got.dtype == jnp.dtype(fields["dtype"])
    err = float(jnp.abs(got.astype(jnp.float32) - want).max() / jnp.abs(want).max())
    assert 1e-5 < err < 5e-2, err


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown precision 'bf8'.*bf16_act.*bf16_mixed.*fp32"):
        precision.policy_fields("bf8")
