"""Mixed precision: matmuls in a low-precision input dtype, accumulated in float32.

Every model module has two dtype fields: `dtype`, the activations' dtype (what flows between
layers, norms and residual adds), and `matmul_dtype`, the dtype matmul *inputs* are cast to
(None: `dtype`). Every matmul, whatever the input dtype, asks XLA for a float32 result
(`preferred_element_type`), so a long contraction is summed in float32, then rounds it to the
activation dtype. Parameters stay float32 (flax's `param_dtype`): the optimizer updates
float32 master weights and keeps float32 moments. Softmaxes and losses compute in float32.

Named policies (`config.precision`, applied to every tower by `apply_policy`):
  "fp32":       float32 activations and matmuls (the reference).
  "bf16_mixed": bfloat16 matmul inputs, float32 activations (the safe mixed default).
  "bf16_act":   bfloat16 matmul inputs and activations (halves activation memory too).
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

POLICIES: dict[str, dict[str, str | None]] = {
    "fp32": {"dtype": "float32", "matmul_dtype": None},
    "bf16_mixed": {"dtype": "float32", "matmul_dtype": "bfloat16"},
    "bf16_act": {"dtype": "bfloat16", "matmul_dtype": "bfloat16"},
}


def policy_fields(name: str) -> dict[str, str | None]:
    """The module dtype fields of a POLICIES name (ValueError naming the choices)."""
    if name not in POLICIES:
        raise ValueError(f"Unknown precision {name!r}: use one of {sorted(POLICIES)}.")
    return dict(POLICIES[name])


def apply_policy(module_config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A module's config dict with the policy's `dtype` / `matmul_dtype` set."""
    return {**module_config, **policy_fields(name)}


def _spec_of(dimension_numbers, lhs_ndim: int, rhs_ndim: int) -> str:
    """The einsum spec of a `lax.dot_general` (its output order: batch, lhs free, rhs free)."""
    (lc, rc), (lb, rb) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    lhs, rhs = [""] * lhs_ndim, [""] * rhs_ndim
    for i, j in zip(lb, rb, strict=True):
        lhs[i] = rhs[j] = next(letters)
    for i, j in zip(lc, rc, strict=True):
        lhs[i] = rhs[j] = next(letters)
    for dims in (lhs, rhs):
        for i, name in enumerate(dims):
            dims[i] = name or next(letters)
    out = [lhs[i] for i in lb]
    out += [lhs[i] for i in range(lhs_ndim) if i not in lb and i not in lc]
    out += [rhs[j] for j in range(rhs_ndim) if j not in rb and j not in rc]
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum of two same-dtype operands with a float32 result, whose backward matmuls also
    take that dtype's inputs. (jax's own transpose asks for a result in the input dtype,
    which XLA:CPU computes ~6x slower in bfloat16 than with a float32 result.)"""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _einsum_f32_fwd(spec, a, b):
    return _einsum_f32(spec, a, b), (a, b)


def _einsum_f32_bwd(spec, residuals, g):
    a, b = residuals
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    g = g.astype(a.dtype)
    da = jnp.einsum(f"{out},{sb}->{sa}", g, b, preferred_element_type=jnp.float32)
    db = jnp.einsum(f"{sa},{out}->{sb}", a, g, preferred_element_type=jnp.float32)
    return da.astype(a.dtype), db.astype(b.dtype)


_einsum_f32.defvjp(_einsum_f32_fwd, _einsum_f32_bwd)


def einsum(spec: str, a: jax.Array, b: jax.Array, matmul_dtype: Any = None) -> jax.Array:
    """`jnp.einsum` of two operands, each index in at least two of a, b and the output:
    inputs cast to `matmul_dtype` (None: their common dtype), float32 accumulation, the
    result in the inputs' common dtype (the activations')."""
    out_dtype = jnp.result_type(a, b)
    compute = jnp.dtype(matmul_dtype or out_dtype)
    if compute == jnp.float32:
        return jnp.einsum(spec, a, b).astype(out_dtype)
    return _einsum_f32(spec, a.astype(compute), b.astype(compute)).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dot_f32(lhs: jax.Array, rhs: jax.Array, dimension_numbers) -> jax.Array:
    """`lax.dot_general` of same-dtype operands with a float32 result; its backward matmuls
    take that dtype's inputs too (as `_einsum_f32`'s)."""
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, preferred_element_type=jnp.float32)


def _dot_f32_fwd(lhs, rhs, dimension_numbers):
    return _dot_f32(lhs, rhs, dimension_numbers), (lhs, rhs)


def _dot_f32_bwd(dimension_numbers, residuals, g):
    lhs, rhs = residuals
    spec = _spec_of(dimension_numbers, lhs.ndim, rhs.ndim)
    return _einsum_f32_bwd(spec, residuals, g)


_dot_f32.defvjp(_dot_f32_fwd, _dot_f32_bwd)


def dot_general(matmul_dtype: Any) -> Callable:
    """A `lax.dot_general` for flax's Dense layers with `einsum`'s casting rules (float32
    inputs keep jax's own dot and its transpose: the fp32 program is unchanged)."""

    def dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        del preferred_element_type  # float32 accumulation, activation-dtype result
        out_dtype = jnp.result_type(lhs, rhs)
        compute = jnp.dtype(matmul_dtype or out_dtype)
        if compute == jnp.float32:
            out = jax.lax.dot_general(
                lhs, rhs, dimension_numbers, precision, preferred_element_type=jnp.float32
            )
            return out.astype(out_dtype)
        lhs, rhs = lhs.astype(compute), rhs.astype(compute)
        return _dot_f32(lhs, rhs, dimension_numbers).astype(out_dtype)

    return dot


def conv_general_dilated(matmul_dtype: Any) -> Callable:
    """`lax.conv_general_dilated` for flax's Conv: inputs cast to `matmul_dtype`, a float32
    result rounded to the activation dtype. (Convolutions here are ViT patch embeddings,
    one per step; their backward keeps jax's rules.)"""

    def conv(lhs, rhs, *args, preferred_element_type=None, **kwargs):
        del preferred_element_type
        out_dtype = jnp.result_type(lhs, rhs)
        if matmul_dtype is not None:
            lhs, rhs = lhs.astype(matmul_dtype), rhs.astype(matmul_dtype)
        out = jax.lax.conv_general_dilated(
            lhs, rhs, *args, preferred_element_type=jnp.float32, **kwargs
        )
        return out.astype(out_dtype)

    return conv
