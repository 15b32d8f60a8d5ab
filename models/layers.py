"""Shared transformer layers: attention, MLP, norms, position embeddings, encoder stack.

Every parameter is created through `nn.with_logical_partitioning` and main activations go
through `nn.with_logical_constraint`, using the logical axes
`batch, length, embed, mlp, heads, kv, vocab, patches, latents` (plus `layers`, the
leading axis that `nn.scan` adds to stacked block parameters). Configs map these to mesh
axes; outside a mesh/rules context the annotations are no-ops.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

# Logical name of the depth axis that `nn.scan` adds to stacked block parameters.
LAYERS_AXIS = "layers"
ATTN_IMPLEMENTATIONS = (None, "einsum", "xla", "cudnn")

part = nn.with_logical_partitioning


def constrain(x: Array, names: tuple[str | None, ...]) -> Array:
    """Logical sharding constraint; skipped when ranks differ (e.g. pooled [B, 1, D])."""
    if x.ndim != len(names):
        return x
    return nn.with_logical_constraint(x, names)


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` whose scale/bias carry the logical axis ("embed",)."""

    scale_init: Callable = part(nn.initializers.ones, ("embed",))
    bias_init: Callable = part(nn.initializers.zeros, ("embed",))


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` (x / rms(x) * scale: no mean, no bias; Llama) whose scale carries the
    logical axis ("embed",)."""

    scale_init: Callable = part(nn.initializers.ones, ("embed",))


class Embed(nn.Embed):
    """`nn.Embed` whose table is gathered along "embed" before the lookup. [...] int -> [..., D].

    FSDP stores the table ("vocab", "embed") with its embed dim sharded. Looking rows up in
    it directly leaves the gradient's scatter-add to reshard the batch-sharded [B, L, D]
    updates to that embed sharding, which XLA can only do by "involuntary full
    rematerialization" (replicate, then slice) on data x fsdp meshes. Gathering the table
    first, as FSDP does for every weight, keeps the lookup and its scatter-add local to each
    batch shard, followed by one reduction; a "vocab" (tensor) sharding is kept.
    """

    def __call__(self, inputs: Array) -> Array:
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"Embed needs integer inputs, got {inputs.dtype}.")
        table = nn.with_logical_constraint(self.embedding, ("vocab", None))
        (table,) = self.promote_dtype(table, dtype=self.dtype, inexact=False)
        return jnp.take(table, inputs, axis=0)


def activation_fn(name: str) -> Callable[[Array], Array]:
    """'gelu' (exact erf, = torch GELU), 'gelu_tanh' (SigLIP), 'quick_gelu' (OpenAI CLIP)."""
    if name == "gelu":
        return lambda x: nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return lambda x: nn.gelu(x, approximate=True)
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    raise ValueError(f"Unknown activation {name!r}: use 'gelu', 'gelu_tanh' or 'quick_gelu'.")


class MlpBlock(nn.Module):
    """Dense -> activation -> dropout -> Dense. [..., D] -> [..., D]."""

    mlp_dim: int
    activation: str = "gelu"
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        width = x.shape[-1]
        h = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            kernel_init=part(nn.initializers.xavier_uniform(), ("embed", "mlp")),
            bias_init=part(nn.initializers.normal(1e-6), ("mlp",)),
            name="fc1",
        )(x)
        h = activation_fn(self.activation)(h)
        h = constrain(h, ("batch", "length", "mlp"))
        h = nn.Dropout(self.dropout)(h, deterministic)
        return nn.Dense(
            width,
            dtype=self.dtype,
            kernel_init=part(nn.initializers.xavier_uniform(), ("mlp", "embed")),
            bias_init=part(nn.initializers.normal(1e-6), ("embed",)),
            name="fc2",
        )(h)


class GatedMlpBlock(nn.Module):
    """SwiGLU MLP (Llama): down(silu(gate(x)) * up(x)), no biases. [..., D] -> [..., D]."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        width = x.shape[-1]

        def dense(features: int, names: tuple[str, str], name: str) -> nn.Dense:
            return nn.Dense(
                features,
                use_bias=False,
                dtype=self.dtype,
                kernel_init=part(nn.initializers.xavier_uniform(), names),
                name=name,
            )

        gate = dense(self.mlp_dim, ("embed", "mlp"), "gate")(x)
        h = nn.silu(gate) * dense(self.mlp_dim, ("embed", "mlp"), "up")(x)
        h = constrain(h, ("batch", "length", "mlp"))
        h = nn.Dropout(self.dropout)(h, deterministic)
        return dense(width, ("mlp", "embed"), "down")(h)


def default_attn_implementation() -> str | None:
    """The hand-written einsum kernel on CPU (measured ~10% faster there), else jax's choice."""
    return "einsum" if jax.default_backend() == "cpu" else None


def einsum_attention(
    q: Array, k: Array, v: Array, mask: Array | None = None, causal: bool = False
) -> Array:
    """Softmax attention with heads moved before length ([B, H, L, hd]) for fast CPU matmuls.

    Args:
      q: [B, T, H, hd]; k, v: [B, S, H, hd].
      mask: bool, broadcastable to [B, H, T, S]; True = attend.
      causal: additionally mask keys after the query position (top-left aligned).

    Returns:
      [B, T, H, hd]. Semantics match `jax.nn.dot_product_attention` (fully masked rows
      give a uniform average, not NaN).
    """
    scale = 1.0 / np.sqrt(q.shape[-1])
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    logits = jnp.einsum("bhtd,bhsd->bhts", q, k) * jnp.asarray(scale, q.dtype)
    if causal:
        t, s = logits.shape[-2:]
        tri = jnp.tril(jnp.ones((t, s), bool))
        mask = tri if mask is None else jnp.logical_and(mask, tri)
    logits = logits.astype(jnp.float32)
    if mask is not None:
        # Same large finite negative as jax's reference so fully masked rows agree.
        logits = jnp.where(mask, logits, -0.7 * jnp.finfo(jnp.float32).max)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhts,bhsd->bhtd", weights, v)
    return out.transpose(0, 2, 1, 3)


def attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    causal: bool = False,
    implementation: str | None = None,
) -> Array:
    """Dispatches to `einsum_attention` or `jax.nn.dot_product_attention`. Shapes as there."""
    if implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown attention implementation {implementation!r}: {ATTN_IMPLEMENTATIONS}"
        )
    if implementation == "einsum":
        return einsum_attention(q, k, v, mask=mask, causal=causal)
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, implementation=implementation
    )


class MultiHeadAttention(nn.Module):
    """Multi-head (self or cross) attention. [B, T, D] (and kv [B, S, D]) -> [B, T, D].

    `implementation`: "einsum" (hand-written, transposed layout), "xla"/"cudnn"
    (`jax.nn.dot_product_attention`), or None = "einsum" on CPU and jax's choice elsewhere.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
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
        y = attention(q, k, v, mask=mask, causal=causal, implementation=impl)
        y = constrain(y, ("batch", "length", "heads", "kv"))
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            dtype=self.dtype,
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
    q: Array, k: Array, v: Array, mask: Array | None = None, implementation: str | None = None
) -> Array:
    """`attention` with fewer key/value heads than query heads (grouped-query attention).

    q: [B, T, H, hd]; k, v: [B, S, Hkv, hd] with Hkv dividing H: query head h reads key/value
    head h // (H / Hkv), the grouping of `jax.nn.dot_product_attention` and HF `repeat_kv`.
    mask: bool broadcastable to [B, H, T, S]. Returns [B, T, H, hd].
    """
    heads, kv_heads = q.shape[2], k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{kv_heads} key/value heads do not divide {heads} query heads.")
    impl = default_attn_implementation() if implementation is None else implementation
    if impl == "einsum" and heads != kv_heads:
        # The einsum kernel pairs heads one to one; jax's kernels take the groups natively.
        k, v = (jnp.repeat(a, heads // kv_heads, axis=2) for a in (k, v))
    return attention(q, k, v, mask=mask, implementation=impl)


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
          cache: one layer's (k, v) [B, S', Hkv, hd]: the new keys/values are written at
            slot `index` (int scalar) and the queries attend over the whole cache.
          kv: precomputed (k, v) [B, S', Hkv, hd] to attend to (cached cross-attention).

        Returns:
          (out [B, T, D], (k, v)): the keys/values this call projected, [B, T or S, Hkv,
          hd], for the caller to cache (`kv` itself when given).
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
        new_kv = (k, v)
        if cache is not None:
            k, v = (
                jax.lax.dynamic_update_slice_in_dim(c, a.astype(c.dtype), index, axis=1)
                for c, a in zip(cache, new_kv, strict=True)
            )
        y = grouped_attention(q, k, v, mask=mask, implementation=self.implementation)
        y = constrain(y, ("batch", "length", "heads", "kv"))
        out = nn.DenseGeneral(
            width,
            axis=(-2, -1),
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=_reshaped_init(
                nn.initializers.xavier_uniform(),
                (self.num_heads, head_dim, width),
                ("heads", "kv", "embed"),
            ),
            bias_init=part(nn.initializers.zeros, ("embed",)),
            name="out",
        )(y)
        return out, new_kv


class EncoderBlock(nn.Module):
    """Residual attention + MLP block. [B, L, D] -> [B, L, D].

    Pre-LN (default, ViT/CLIP): x + Attn(LN(x)), then x + MLP(LN(x)). Post-LN
    (`post_norm=True`, BERT): LN(x + Attn(x)), then LN(x + MLP(x)); the norms keep their
    names, "ln_1" on the attention branch and "ln_2" on the MLP branch, so both layouts have
    the same parameter tree.

    `causal` is a field (not a call argument) so the block stays scan/remat friendly:
    the only non-array call argument is `deterministic` (positional, static for remat).
    """

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    dropout: float = 0.0
    causal: bool = False
    post_norm: bool = False
    norm_eps: float = 1e-6
    attn_implementation: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True) -> Array:
        names = ("batch", "length", "embed")
        ln_1 = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="ln_1")
        ln_2 = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="ln_2")
        attn = MultiHeadAttention(
            self.num_heads, dtype=self.dtype, implementation=self.attn_implementation, name="attn"
        )
        mlp = MlpBlock(self.mlp_dim, self.activation, self.dropout, dtype=self.dtype, name="mlp")
        if self.post_norm:
            y = nn.Dropout(self.dropout)(attn(x, mask=mask, causal=self.causal), deterministic)
            x = constrain(ln_1(x + y), names)
            y = nn.Dropout(self.dropout)(mlp(x, deterministic), deterministic)
            return constrain(ln_2(x + y), names)
        y = nn.Dropout(self.dropout)(attn(ln_1(x), mask=mask, causal=self.causal), deterministic)
        x = constrain(x + y, names)
        y = nn.Dropout(self.dropout)(mlp(ln_2(x), deterministic), deterministic)
        return constrain(x + y, names)


class Encoder(nn.Module):
    """A stack of `EncoderBlock`s plus an optional final LayerNorm.

    `post_norm=True` stacks post-LN blocks, whose output is already normalised: it needs
    `final_norm=False` (a ValueError otherwise, rather than a silently extra norm).

    Parameters: unscanned, blocks are "block_0" ... "block_{depth-1}"; with `scan=True`
    one "blocks" subtree holds every leaf stacked along a leading `layers` axis (stack
    the per-layer leaves along axis 0 to convert). `remat` recomputes each block's
    activations in the backward pass. Final norm: "encoder_norm".
    """

    depth: int
    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    dropout: float = 0.0
    causal: bool = False
    scan: bool = False
    remat: bool = False
    final_norm: bool = True
    post_norm: bool = False
    norm_eps: float = 1e-6
    attn_implementation: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: Array, mask: Array | None = None, *, train: bool = False
    ) -> tuple[Array, dict[str, Any]]:
        """x: [B, L, D]; mask: bool broadcastable to [B, H, L, L].

        Returns ([B, L, D], aux); aux["block_outputs"] lists each block's [B, L, D]
        output (unscanned only: a scan would have to stack them in memory).
        """
        if self.post_norm and self.final_norm:
            raise ValueError(
                "post_norm=True blocks end in a LayerNorm already: set final_norm=False."
            )
        block_cls = EncoderBlock
        if self.remat:
            # argnum 3 = `deterministic` (self is 0); static so dropout can branch on it.
            block_cls = nn.remat(EncoderBlock, static_argnums=(3,), prevent_cse=not self.scan)
        kwargs = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dropout=self.dropout,
            causal=self.causal,
            post_norm=self.post_norm,
            norm_eps=self.norm_eps,
            attn_implementation=self.attn_implementation,
            dtype=self.dtype,
        )
        aux: dict[str, Any] = {}
        x = constrain(x, ("batch", "length", "embed"))
        if self.scan:

            def body(block: nn.Module, carry: Array, _: None) -> tuple[Array, None]:
                return block(carry, mask, not train), None

            x, _ = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
            )(block_cls(**kwargs, name="blocks"), x, None)
        else:
            outputs = []
            for i in range(self.depth):
                x = block_cls(**kwargs, name=f"block_{i}")(x, mask, not train)
                outputs.append(x)
            aux["block_outputs"] = outputs
        if self.final_norm:
            x = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="encoder_norm")(x)
        return x, aux


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over tokens. [B, L, D] -> [B, D]."""

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    norm_eps: float = 1e-6
    attn_implementation: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        """x: [B, L, D]; mask: optional bool key mask [B, L] (True = real token)."""
        b, _, d = x.shape
        probe = self.param(
            "probe", part(nn.initializers.xavier_uniform(), (None, None, "embed")), (1, 1, d)
        )
        probe = jnp.broadcast_to(probe.astype(x.dtype), (b, 1, d))
        attn_mask = None if mask is None else mask[:, None, None, :]
        y = MultiHeadAttention(
            self.num_heads, dtype=self.dtype, implementation=self.attn_implementation, name="attn"
        )(probe, x, mask=attn_mask)
        z = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="ln")(y)
        y = y + MlpBlock(self.mlp_dim, self.activation, dtype=self.dtype, name="mlp")(z)
        return y[:, 0]


def dense_head(
    features: int, use_bias: bool, zero_init: bool, dtype: Dtype, name: str = "head"
) -> nn.Dense:
    """Final classifier/projection Dense, kernel axes ("embed", None). Zero init suits a
    classifier trained from scratch; a projection feeding a normalised embedding must not
    start at zero (the normalisation would have no gradient direction)."""
    kernel_init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=part(kernel_init, ("embed", None)),
        bias_init=part(nn.initializers.zeros, (None,)),
        name=name,
    )


def sincos_1d(length: int, width: int, temperature: float = 10_000.0) -> Array:
    """Transformer sinusoidal embedding [1, length, width]: [sin(p*w_i) | cos(p*w_i)],
    w_i = temperature ** (-i / (width/2 - 1)) for i < width/2."""
    if width % 2:
        raise ValueError(f"sincos_1d needs an even width, got {width}.")
    omega = _frequencies(width // 2, temperature)
    angles = np.arange(length, dtype=np.float64)[:, None] * omega[None]
    return jnp.asarray(np.concatenate([np.sin(angles), np.cos(angles)], 1)[None], jnp.float32)


def sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> Array:
    """2-D sinusoidal embedding of an h x w grid in row-major order: [1, h*w, width].

    Channels are [sin(x*w_i) | cos(x*w_i) | sin(y*w_i) | cos(y*w_i)] with x the column,
    y the row and w_i = temperature ** (-i / (width/4 - 1)) for i < width/4.
    """
    if width % 4:
        raise ValueError(f"sincos_2d needs a width divisible by 4, got {width}.")
    omega = _frequencies(width // 4, temperature)
    y, x = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    ax = x.reshape(-1)[:, None] * omega[None]
    ay = y.reshape(-1)[:, None] * omega[None]
    emb = np.concatenate([np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay)], axis=1)
    return jnp.asarray(emb[None], jnp.float32)


def _frequencies(n: int, temperature: float) -> np.ndarray:
    """n geometric frequencies from 1 down to 1/temperature (float64, computed once)."""
    exponent = np.arange(n, dtype=np.float64) / max(n - 1, 1)
    return 1.0 / temperature**exponent
