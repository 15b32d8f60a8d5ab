"""The decoder's layer (`DecoderBlock`) and attention mask (`decoder_mask`); see decoder.py."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import attention, layers

Array = jax.Array


def decoder_mask(
    q_slots: Array, k_slots: Array, key_valid: Array, prefix_len: Array | None = None
) -> Array:
    """Causal (or prefix-LM) mask over sequence slots. Returns bool [B, 1, T, S].

    q_slots: [T] int, k_slots: [S] int slots of the queries and keys; key_valid: [B, S] bool
    (False keys are never attended); prefix_len: [B] int, slots below it attend to each other
    bidirectionally (SimVLM's prefix LM), later slots attend causally.
    """
    allowed = k_slots[None, :] <= q_slots[:, None]  # [T, S]
    if prefix_len is not None:
        q_prefix = q_slots[None, :] < prefix_len[:, None]  # [B, T]
        k_prefix = k_slots[None, :] < prefix_len[:, None]  # [B, S]
        allowed = allowed[None] | (q_prefix[:, :, None] & k_prefix[:, None, :])
    return (allowed & key_valid[:, None, :])[:, None]


class DecoderBlock(nn.Module):
    """Pre-norm block: x + SelfAttn(norm(x)) [+ CrossAttn(norm(x), memory)] + MLP(norm(x)).

    [B, T, D] -> ([B, T, D], new): `new` holds the keys/values to cache, head-major ("k", "v"
    [B, Hkv, T, hd]; "cross_k", "cross_v" [B, Hkv, M, hd] when projected from memory), empty
    without a cache. The only non-array call argument is `deterministic` (static for remat).
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    mlp_type: str = "gelu"
    activation: str = "gelu"
    norm_type: str = "layernorm"
    norm_eps: float = 1e-6
    attn_bias: bool = True
    rope_base: float | None = None
    cross_attention: bool = False
    dropout: float = 0.0
    attn_implementation: str | None = None
    dtype: Any = jnp.float32
    matmul_dtype: Any = None  # models/precision.py

    @nn.compact
    def __call__(
        self, x: Array, ctx: dict[str, Any], layer_cache: dict[str, Array] | None, deterministic
    ) -> tuple[Array, dict[str, Array]]:
        """ctx: "positions" [B, T], "mask" [B, 1, T, S], "memory" [B, M, Dm] | None,
        "memory_mask" [B, 1, 1, M] | None, "index" int scalar; layer_cache: this layer's
        "k", "v" [B, Hkv, S, hd] (and "cross_k", "cross_v") or None."""
        names = ("batch", "length", "embed")
        attn = lambda name, rope_base: attention.GroupedQueryAttention(  # noqa: E731
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            use_bias=self.attn_bias,
            rope_base=rope_base,
            dtype=self.dtype,
            matmul_dtype=self.matmul_dtype,
            implementation=self.attn_implementation,
            name=name,
        )
        drop = lambda y: nn.Dropout(self.dropout)(y, deterministic)  # noqa: E731
        new: dict[str, Array] = {}

        cache = None if layer_cache is None else (layer_cache["k"], layer_cache["v"])
        y, (k, v) = attn("attn", self.rope_base)(
            self._norm("ln_1")(x),
            mask=ctx["mask"],
            positions=ctx["positions"],
            cache=cache,
            index=ctx["index"],
        )
        if layer_cache is not None:
            new.update(k=k, v=v)
        x = layers.constrain(x + drop(y), names)

        if self.cross_attention:
            h = self._norm("ln_cross")(x)
            if ctx["memory"] is not None:
                y, (k, v) = attn("cross_attn", None)(h, ctx["memory"], mask=ctx["memory_mask"])
                if layer_cache is not None:  # the cache is head-major
                    new.update(cross_k=k.transpose(0, 2, 1, 3), cross_v=v.transpose(0, 2, 1, 3))
            else:  # decoding steps: the memory's keys/values were cached at prefill
                kv = (layer_cache["cross_k"], layer_cache["cross_v"])
                y, _ = attn("cross_attn", None)(h, mask=ctx["memory_mask"], kv=kv)
            x = layers.constrain(x + drop(y), names)

        if self.mlp_type == "swiglu":
            mlp = layers.GatedMlpBlock(
                self.mlp_dim,
                self.dropout,
                dtype=self.dtype,
                matmul_dtype=self.matmul_dtype,
                name="mlp",
            )
        else:
            mlp = layers.MlpBlock(
                self.mlp_dim,
                self.activation,
                self.dropout,
                dtype=self.dtype,
                matmul_dtype=self.matmul_dtype,
                name="mlp",
            )
        y = mlp(self._norm("ln_2")(x), deterministic)
        return layers.constrain(x + drop(y), names), new

    def _norm(self, name: str) -> nn.Module:
        return norm_layer(self.norm_type, self.norm_eps, self.dtype, name)


def norm_layer(norm_type: str, eps: float, dtype: Any, name: str) -> nn.Module:
    """A "layernorm" (scale and bias) or "rmsnorm" (scale only) over the last axis."""
    if norm_type == "rmsnorm":
        return layers.RMSNorm(epsilon=eps, dtype=dtype, name=name)
    return layers.LayerNorm(epsilon=eps, dtype=dtype, name=name)
