"""Attention: the einsum and jax kernels, multi-head and grouped-query attention, rotary
position embeddings. Shapes and logical axes as in models/layers.py."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import precision
from models.axes import constrain, part

Array = jax.Array
Dtype = Any

ATTN_IMPLEMENTATIONS = (None, "einsum", "xla", "cudnn")


def default_attn_implementation() -> str | None:
    """The hand-written einsum kernel on CPU (measured ~10% faster there), else jax's choice."""
    return "einsum" if jax.default_backend() == "cpu" else None


def einsum_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    causal: bool = False,
    matmul_dtype: Dtype | None = None,
) -> Array:
    """Softmax attention with heads moved before length ([B, H, L, hd]) for fast CPU matmuls.

    Args:
      q: [B, T, H, hd]; k, v: [B, S, H, hd].
      mask: bool, broadcastable to [B, H, T, S]; True = attend.
      causal: additionally mask keys after the query position (top-left aligned).
      matmul_dtype: both matmuls' input dtype (None: q's), accumulated in float32.

    Returns:
      [B, T, H, hd]. A query row without any valid key gives 0 (it attends to nothing).
    """
    scale = jnp.asarray(1.0 / np.sqrt(q.shape[-1]), q.dtype)
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    # Scaling q ([.., T, hd]) is cheaper than scaling the logits ([.., T, S]).
    logits = precision.einsum("bhtd,bhsd->bhts", q * scale, k, matmul_dtype)
    padded = mask is not None  # a causal mask alone leaves every row its diagonal key
    if causal:
        t, s = logits.shape[-2:]
        tri = jnp.tril(jnp.ones((t, s), bool))
        mask = tri if mask is None else jnp.logical_and(mask, tri)
    logits = logits.astype(jnp.float32)
    if mask is not None:
        # Same large finite negative as jax's reference so fully masked rows agree.
        logits = jnp.where(mask, logits, -0.7 * jnp.finfo(jnp.float32).max)
    # softmax(l) @ v == (exp(l - max) @ v) / sum(exp(l - max)): normalising after the value
    # matmul divides [.., T, hd] instead of [.., T, S] (~13% of a ViT-B/16 attention's
    # forward + backward on CPU). The max only shifts l, so it needs no gradient.
    unnormalised = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, -1, keepdims=True)))
    total = jnp.sum(unnormalised, -1, keepdims=True)
    out = precision.einsum("bhts,bhsd->bhtd", unnormalised.astype(v.dtype), v, matmul_dtype)
    out = (out.astype(jnp.float32) / total).astype(v.dtype)
    out = zero_rows_without_keys(out, mask if padded else None, heads_axis=1)
    return out.transpose(0, 2, 1, 3)


def zero_rows_without_keys(out: Array, mask: Array | None, *, heads_axis: int) -> Array:
    """`out` with every query row that has no valid key set to 0.

    Softmax over a row whose keys are all masked (e.g. a text-only example's empty prefix)
    is uniform over the masked keys, so the row would average values it must not see; such
    a row contributes nothing instead (and passes no gradient to q, k or v).

    out: [B, H, T, hd] (heads_axis=1) or [B, T, H, hd] (heads_axis=2); mask: bool
    broadcastable to [B, H, T, S] (any causal part included), None = every key valid.
    """
    if mask is None:
        return out
    mask = jnp.asarray(mask)
    has_keys = jnp.any(mask.reshape((1,) * (4 - mask.ndim) + mask.shape), -1, keepdims=True)
    if heads_axis == 2:
        has_keys = jnp.swapaxes(has_keys, 1, 2)
    return jnp.where(has_keys, out, jnp.zeros((), out.dtype))


def attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    causal: bool = False,
    implementation: str | None = None,
    matmul_dtype: Dtype | None = None,
) -> Array:
    """Dispatches to `einsum_attention` or `jax.nn.dot_product_attention`. Shapes as there,
    and as there a query row without any valid key gives 0; `matmul_dtype` (None: q's) is
    what q, k, v enter the kernels as."""
    if implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown attention implementation {implementation!r}: {ATTN_IMPLEMENTATIONS}"
        )
    if implementation == "einsum":
        return einsum_attention(q, k, v, mask=mask, causal=causal, matmul_dtype=matmul_dtype)
    out_dtype = q.dtype
    if matmul_dtype is not None:  # jax's kernels accumulate in float32 themselves
        q, k, v = (a.astype(matmul_dtype) for a in (q, k, v))
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, implementation=implementation
    )
    # jax's kernels average a row without keys uniformly over the masked values.
    if mask is not None and causal:
        mask = jnp.logical_and(mask, jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool)))
    return zero_rows_without_keys(out, mask, heads_axis=2).astype(out_dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head (self or cross) attention. [B, T, D] (and kv [B, S, D]) -> [B, T, D].

    `implementation`: "einsum" (hand-written, transposed layout), "xla"/"cudnn"
    (`jax.nn.dot_product_attention`), or None = "einsum" on CPU and jax's choice elsewhere.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None  # models/precision.py
    implementation: str | None = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        kv: Array | None = None,
        *,
        mask: Array | None = None,
        causal: bool = False,
    ) -> Array:
        """x: [B, T, D]; kv: [B, S, D] (defaults to x); mask: bool broadcastable to
        [B, H, T, S], e.g. [B, 1, T, S] or key padding [B, 1, 1, S]."""
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}.")
        head_dim = width // self.num_heads
        kv = x if kv is None else kv

        def proj(name: str, inp: Array) -> Array:
            y = nn.DenseGeneral(
                (self.num_heads, head_dim),
                dtype=self.dtype,
                dot_general=precision.dot_general(self.matmul_dtype),
                kernel_init=_reshaped_init(
                    nn.initializers.xavier_uniform(),
                    (inp.shape[-1], self.num_heads, head_dim),
                    ("embed", "heads", "kv"),
                ),
                bias_init=_reshaped_init(
                    nn.initializers.zeros, (self.num_heads, head_dim), ("heads", "kv")
                ),
                name=name,
            )(inp)
            return constrain(y, ("batch", "length", "heads", "kv"))

        q, k, v = proj("query", x), proj("key", kv), proj("value", kv)
        impl = self.implementation
        impl = default_attn_implementation() if impl is None else impl
        y = attention(
            q, k, v, mask=mask, causal=causal, implementation=impl, matmul_dtype=self.matmul_dtype
        )
        y = constrain(y, ("batch", "length", "heads", "kv"))
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            dtype=self.dtype,
            dot_general=precision.dot_general(self.matmul_dtype),
            kernel_init=_reshaped_init(
                nn.initializers.xavier_uniform(),
                (self.num_heads, head_dim, width),
                ("heads", "kv", "embed"),
            ),
            bias_init=part(nn.initializers.zeros, ("embed",)),
            name="out",
        )(y)


def _reshaped_init(
    init: Callable, shape: tuple[int, ...], names: tuple[str | None, ...]
) -> Callable:
    """Initializer for a DenseGeneral kernel/bias, boxed at its final rank.

    DenseGeneral asks for a flattened kernel/bias and reshapes it afterwards, but a
    logical box must hold an array of its own rank (its constraint is applied on unbox).
    """

    def reshaped(key: Array, flat_shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
        return init(key, flat_shape, dtype).reshape(shape)

    return part(reshaped, names)


def rotary_embedding(x: Array, positions: Array, base: float = 10_000.0) -> Array:
    """Rotary position embedding (RoPE) in the half-split layout of GPT-NeoX and HF Llama.

    Args:
      x: [B, T, H, hd], hd even. Channel i < hd/2 pairs with channel i + hd/2.
      positions: [B, T] int; pair i turns by the angle positions * base ** (-2i / hd).

    Returns:
      [B, T, H, hd] in x.dtype (rotated in float32).
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"rotary_embedding needs an even head_dim, got {head_dim}.")
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    sin, cos = jnp.sin(angles)[:, :, None], jnp.cos(angles)[:, :, None]  # [B, T, 1, hd/2]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def grouped_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    implementation: str | None = None,
    kv_heads_major: bool = False,
    matmul_dtype: Dtype | None = None,
) -> Array:
    """`attention` with fewer key/value heads than query heads (grouped-query attention).

    q: [B, T, H, hd]; k, v: [B, S, Hkv, hd] (or [B, Hkv, S, hd] with `kv_heads_major`, the KV
    cache's layout) with Hkv dividing H: query head h reads key/value head h // (H / Hkv), the
    grouping of `jax.nn.dot_product_attention` and HF `repeat_kv`.
    mask: bool broadcastable to [B, H, T, S]. Returns [B, T, H, hd].
    """
    heads, kv_heads = q.shape[2], k.shape[1 if kv_heads_major else 2]
    if heads % kv_heads:
        raise ValueError(f"{kv_heads} key/value heads do not divide {heads} query heads.")
    impl = default_attn_implementation() if implementation is None else implementation
    if impl == "einsum" and heads != kv_heads:
        # The einsum kernel pairs heads one to one; jax's kernels take the groups natively.
        k, v = (jnp.repeat(a, heads // kv_heads, axis=1 if kv_heads_major else 2) for a in (k, v))
    if not kv_heads_major:
        return attention(q, k, v, mask=mask, implementation=impl, matmul_dtype=matmul_dtype)
    if impl != "einsum":
        k, v = (a.transpose(0, 2, 1, 3) for a in (k, v))
        return attention(q, k, v, mask=mask, implementation=impl, matmul_dtype=matmul_dtype)
    # Keys/values are already head-major: only the (short) queries move, so a decoding step
    # reads the cache in place instead of transposing all of it in every layer.
    return einsum_attention_heads_major(q, k, v, mask, matmul_dtype)


def einsum_attention_heads_major(
    q: Array, k: Array, v: Array, mask: Array | None, matmul_dtype: Dtype | None = None
) -> Array:
    """`einsum_attention` on head-major keys/values: q [B, T, H, hd]; k, v [B, H, S, hd]."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    logits = precision.einsum("bhtd,bhsd->bhts", q.transpose(0, 2, 1, 3), k, matmul_dtype)
    logits = (logits * jnp.asarray(scale, q.dtype)).astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, -0.7 * jnp.finfo(jnp.float32).max)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = precision.einsum("bhts,bhsd->bhtd", weights, v, matmul_dtype)
    return zero_rows_without_keys(out, mask, heads_axis=1).transpose(0, 2, 1, 3)


class GroupedQueryAttention(nn.Module):
    """Grouped-query (self or cross) attention with optional RoPE and a KV cache.

    [B, T, D] (and kv inputs [B, S, Dkv]) -> [B, T, D]. `num_kv_heads` (default num_heads)
    must divide `num_heads`: 1 is multi-query attention. `head_dim` defaults to
    D // num_heads. Parameters as `MultiHeadAttention`'s: "query" [D, H, hd], "key" and
    "value" [Dkv, Hkv, hd], "out" [H, hd, D], with biases when `use_bias`. `rope_base` set:
    rotary embeddings on queries and keys (self-attention only).
    """

    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    use_bias: bool = True
    rope_base: float | None = None
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None
    implementation: str | None = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        inputs_kv: Array | None = None,
        *,
        mask: Array | None = None,
        positions: Array | None = None,
        cache: tuple[Array, Array] | None = None,
        index: Array | None = None,
        kv: tuple[Array, Array] | None = None,
    ) -> tuple[Array, tuple[Array, Array]]:
        """Attends x's queries to keys/values from x, `inputs_kv`, a cache or `kv`.

        Args:
          x: [B, T, D].
          inputs_kv: [B, S, Dkv] to project keys/values from (cross-attention); None = x.
          mask: bool broadcastable to [B, H, T, S'], S' the number of keys attended.
          positions: [B, T] int positions of x's tokens (needed with `rope_base`).
          cache: one layer's (k, v) [B, Hkv, S', hd] (head-major, so decoding reads it in
            place): the new keys/values are written at slot `index` (int scalar) and the
            queries attend over the whole cache.
          kv: precomputed head-major (k, v) [B, Hkv, S', hd] to attend to (cached
            cross-attention).

        Returns:
          (out [B, T, D], (k, v)): the keys/values this call projected, [B, T or S, Hkv, hd]
          ([B, Hkv, T or S, hd] with `cache` or `kv`: the cache's layout; `kv` itself when
          given).
        """
        width = x.shape[-1]
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"num_kv_heads {kv_heads} does not divide num_heads {self.num_heads}.")
        if self.head_dim is None and width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}.")
        head_dim = self.head_dim or width // self.num_heads
        rope = self.rope_base is not None
        if rope and (inputs_kv is not None or kv is not None):
            raise ValueError("Rotary embeddings are for self-attention: no inputs_kv or kv.")
        if rope and positions is None:
            raise ValueError("Rotary embeddings need the token positions.")

        def proj(name: str, inp: Array, heads: int) -> Array:
            y = nn.DenseGeneral(
                (heads, head_dim),
                use_bias=self.use_bias,
                dtype=self.dtype,
                dot_general=precision.dot_general(self.matmul_dtype),
                kernel_init=_reshaped_init(
                    nn.initializers.xavier_uniform(),
                    (inp.shape[-1], heads, head_dim),
                    ("embed", "heads", "kv"),
                ),
                bias_init=_reshaped_init(nn.initializers.zeros, (heads, head_dim), ("heads", "kv")),
                name=name,
            )(inp)
            return constrain(y, ("batch", "length", "heads", "kv"))

        q = proj("query", x, self.num_heads)
        if kv is None:
            source = x if inputs_kv is None else inputs_kv
            k, v = proj("key", source, kv_heads), proj("value", source, kv_heads)
        else:
            k, v = kv
        if rope:
            q = rotary_embedding(q, positions, self.rope_base)
            k = rotary_embedding(k, positions, self.rope_base)
        heads_major = cache is not None or kv is not None
        if cache is not None:
            k, v = (a.transpose(0, 2, 1, 3) for a in (k, v))
        new_kv = (k, v)
        if cache is not None:
            k, v = (
                jax.lax.dynamic_update_slice_in_dim(c, a.astype(c.dtype), index, axis=2)
                for c, a in zip(cache, new_kv, strict=True)
            )
        y = grouped_attention(
            q,
            k,
            v,
            mask=mask,
            implementation=self.implementation,
            kv_heads_major=heads_major,
            matmul_dtype=self.matmul_dtype,
        )
        y = constrain(y, ("batch", "length", "heads", "kv"))
        out = nn.DenseGeneral(
            width,
            axis=(-2, -1),
            use_bias=self.use_bias,
            dtype=self.dtype,
            dot_general=precision.dot_general(self.matmul_dtype),
            kernel_init=_reshaped_init(
                nn.initializers.xavier_uniform(),
                (self.num_heads, head_dim, width),
                ("heads", "kv", "embed"),
            ),
            bias_init=part(nn.initializers.zeros, ("embed",)),
            name="out",
        )(y)
        return out, new_kv
