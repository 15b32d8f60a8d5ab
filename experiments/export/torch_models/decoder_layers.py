"""PyTorch mirrors of the decoder's layers: models/layers.py `RMSNorm`, `GatedMlpBlock`,
models/attention.py `rotary_embedding`, `GroupedQueryAttention` and models/decoder_block.py
`decoder_mask`, `DecoderBlock`.

Attribute names follow the vlax parameter tree ("ln_1", "attn", "ln_cross", "cross_attn",
"mlp" with fc1/fc2 or gate/up/down); every computation runs in fp32 in the order vlax uses.
No KV cache: each call attends over the whole sequence it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MlpBlock, attend


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (no mean, no bias; Llama). [..., D] -> [..., D]."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.eps) * self.weight


def norm_layer(norm_type: str, width: int, eps: float) -> nn.Module:
    """ "layernorm" (weight and bias) or "rmsnorm" (weight only) over the last axis."""
    if norm_type == "rmsnorm":
        return RMSNorm(width, eps)
    if norm_type == "layernorm":
        return nn.LayerNorm(width, eps=eps)
    raise ValueError(f"Unknown norm_type {norm_type!r}: use 'layernorm' or 'rmsnorm'.")


class GatedMlpBlock(nn.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x)), no biases. [..., D] -> [..., D]."""

    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.gate = nn.Linear(width, mlp_dim, bias=False)
        self.up = nn.Linear(width, mlp_dim, bias=False)
        self.down = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def rotary_embedding(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE, half-split layout (GPT-NeoX, HF Llama). x [B, T, H, hd] (hd even), positions
    [B, T] int -> [B, T, H, hd]: channel i < hd/2 pairs with i + hd/2 and turns by
    positions * base ** (-2i / hd) (frequencies in float64, then fp32, as vlax)."""
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"rotary_embedding needs an even head_dim, got {head_dim}.")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    inv_freq = (1.0 / base**exponent).to(device=x.device, dtype=torch.float32)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # [B, T, hd/2]
    sin, cos = angles.sin()[:, :, None], angles.cos()[:, :, None]  # [B, T, 1, hd/2]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class GroupedQueryAttention(nn.Module):
    """Grouped-query (self or cross) attention with optional RoPE.

    x [B, T, D] (and kv inputs [B, S, kv_width]) -> [B, T, D]. query [D -> H*hd], key and
    value [kv_width -> Hkv*hd], out [H*hd -> D], all with biases when `bias`. Query head h
    reads key/value head h // (H / Hkv). `rope_base` set: rotary embeddings on queries and
    keys (self-attention only).
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        bias: bool = True,
        rope_base: float | None = None,
        kv_width: int | None = None,
    ):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads {num_kv_heads} does not divide num_heads {num_heads}.")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_base = rope_base
        kv_width = width if kv_width is None else kv_width
        self.query = nn.Linear(width, num_heads * head_dim, bias=bias)
        self.key = nn.Linear(kv_width, num_kv_heads * head_dim, bias=bias)
        self.value = nn.Linear(kv_width, num_kv_heads * head_dim, bias=bias)
        self.out = nn.Linear(num_heads * head_dim, width, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        inputs_kv: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mask: bool broadcastable to [B, H, T, S], True = attend; positions [B, T] int
        (needed with rope)."""
        rope = self.rope_base is not None
        if rope and inputs_kv is not None:
            raise ValueError("Rotary embeddings are for self-attention: no inputs_kv.")
        if rope and positions is None:
            raise ValueError("Rotary embeddings need the token positions.")
        source = x if inputs_kv is None else inputs_kv
        b, t, _ = x.shape
        s, hd = source.shape[1], self.head_dim
        q = self.query(x).reshape(b, t, self.num_heads, hd)
        k = self.key(source).reshape(b, s, self.num_kv_heads, hd)
        v = self.value(source).reshape(b, s, self.num_kv_heads, hd)
        if rope:
            q = rotary_embedding(q, positions, self.rope_base)
            k = rotary_embedding(k, positions, self.rope_base)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
        q, k, v = (a.transpose(1, 2) for a in (q, k, v))  # [B, H, n, hd]
        y = attend(q, k, v, mask)  # [B, H, T, hd]
        return self.out(y.transpose(1, 2).reshape(b, t, self.num_heads * hd))


def decoder_mask(
    length: int, key_valid: torch.Tensor, prefix_len: torch.Tensor | None = None
) -> torch.Tensor:
    """Causal (or prefix-LM) self-attention mask of a full sequence: bool [B, 1, T, T].

    key_valid [B, T] bool (False keys are never attended); prefix_len [B] int: positions
    below it attend to each other bidirectionally (SimVLM), later ones causally.
    """
    slots = torch.arange(length, device=key_valid.device)
    allowed = slots[None, :] <= slots[:, None]  # [T, S]
    if prefix_len is not None:
        in_prefix = slots[None, :] < prefix_len.to(slots.device)[:, None]  # [B, T]
        allowed = allowed[None] | (in_prefix[:, :, None] & in_prefix[:, None, :])
    return (allowed & key_valid[:, None, :])[:, None]


class DecoderBlock(nn.Module):
    """Pre-norm block: x + SelfAttn(norm(x)) [+ CrossAttn(norm(x), memory)] + MLP(norm(x)).
    [B, T, D] -> [B, T, D]; the "gelu" MLP has biases (fc1/fc2), "swiglu" none."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        mlp_dim: int,
        *,
        mlp_type: str = "gelu",
        activation: str = "gelu",
        norm_type: str = "layernorm",
        norm_eps: float = 1e-6,
        attn_bias: bool = True,
        rope_base: float | None = None,
        memory_width: int | None = None,
    ):
        super().__init__()
        heads = (width, num_heads, num_kv_heads, head_dim)
        self.ln_1 = norm_layer(norm_type, width, norm_eps)
        self.attn = GroupedQueryAttention(*heads, bias=attn_bias, rope_base=rope_base)
        self.ln_cross = self.cross_attn = None
        if memory_width is not None:
            self.ln_cross = norm_layer(norm_type, width, norm_eps)
            self.cross_attn = GroupedQueryAttention(*heads, bias=attn_bias, kv_width=memory_width)
        self.ln_2 = norm_layer(norm_type, width, norm_eps)
        if mlp_type == "swiglu":
            self.mlp: nn.Module = GatedMlpBlock(width, mlp_dim)
        elif mlp_type == "gelu":
            self.mlp = MlpBlock(width, mlp_dim, activation)
        else:
            raise ValueError(f"Unknown mlp_type {mlp_type!r}: use 'gelu' or 'swiglu'.")

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mask [B, 1, T, T] bool; positions [B, T]; memory [B, M, Dm]; memory_mask
        [B, 1, 1, M] bool."""
        x = x + self.attn(self.ln_1(x), mask=mask, positions=positions)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.ln_cross(x), memory, mask=memory_mask)
        return x + self.mlp(self.ln_2(x))
