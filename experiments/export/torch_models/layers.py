"""PyTorch mirrors of models/layers.py: attention, MLP, pre-LN blocks, encoder, MAP head.

Attribute names follow the vlax parameter tree ("query", "ln_1", "encoder_norm", ...) so the
export table reads as a rename. Every computation runs in fp32 in the order vlax uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# vlax's masked logit (jax's reference value).
_MASKED = -0.7 * torch.finfo(torch.float32).max


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """'gelu' (exact erf), 'gelu_tanh' (SigLIP), 'quick_gelu' (OpenAI CLIP)."""
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    raise ValueError(f"Unknown activation {name!r}: use 'gelu', 'gelu_tanh' or 'quick_gelu'.")


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax attention of q [B, H, T, hd] over k, v [B, H, S, hd] -> [B, H, T, hd].

    mask: bool broadcastable to [B, H, T, S], True = attend (any causal part included). As
    in vlax (models/attention.py), a query row without any valid key gives 0: it attends to
    nothing, rather than averaging the masked values.
    """
    logits = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is None:
        return torch.softmax(logits, dim=-1) @ v
    y = torch.softmax(logits.masked_fill(~mask, _MASKED), dim=-1) @ v
    return y.masked_fill(~mask.any(-1, keepdim=True), 0.0)


class MultiHeadAttention(nn.Module):
    """Softmax attention. x [B, T, D], kv [B, S, D] (default x) -> [B, T, D]."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """mask: bool broadcastable to [B, H, T, S], True = attend."""
        kv = x if kv is None else kv
        b, t, d = x.shape
        s = kv.shape[1]
        hd = d // self.num_heads

        def heads(y: torch.Tensor, n: int) -> torch.Tensor:  # [B, n, D] -> [B, H, n, hd]
            return y.reshape(b, n, self.num_heads, hd).transpose(1, 2)

        q, k, v = heads(self.query(x), t), heads(self.key(kv), s), heads(self.value(kv), s)
        if causal:
            tri = torch.ones(t, s, dtype=torch.bool, device=x.device).tril()
            mask = tri if mask is None else mask & tri
        y = attend(q, k, v, mask)  # [B, H, T, hd]
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class MlpBlock(nn.Module):
    """Dense -> activation -> Dense. [..., D] -> [..., D]."""

    def __init__(self, width: int, mlp_dim: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)
        self.act = activation_fn(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Residual block. [B, L, D] -> [B, L, D]. Pre-LN: x + Attn(LN(x)), then x + MLP(LN(x));
    post-LN (BERT): LN(x + Attn(x)), then LN(x + MLP(x)), "ln_1"/"ln_2" on the same branches."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_dim: int,
        activation: str,
        eps: float,
        post_norm: bool = False,
    ):
        super().__init__()
        self.post_norm = post_norm
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = MultiHeadAttention(width, num_heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MlpBlock(width, mlp_dim, activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        if self.post_norm:
            x = self.ln_1(x + self.attn(x, mask=mask, causal=causal))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), mask=mask, causal=causal)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """`depth` EncoderBlocks ("blocks.{i}") plus an optional final LayerNorm ("encoder_norm")."""

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        activation: str,
        norm_eps: float,
        final_norm: bool,
        causal: bool = False,
        post_norm: bool = False,
    ):
        super().__init__()
        if post_norm and final_norm:  # as vlax: never a silently extra norm
            raise ValueError("post_norm=True blocks end in a LayerNorm already: final_norm=False.")
        self.causal = causal
        self.blocks = nn.ModuleList(
            EncoderBlock(width, num_heads, mlp_dim, activation, norm_eps, post_norm)
            for _ in range(depth)
        )
        self.encoder_norm = nn.LayerNorm(width, eps=norm_eps) if final_norm else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, D]; mask: bool broadcastable to [B, H, L, L] -> [B, L, D]."""
        for block in self.blocks:
            x = block(x, mask, self.causal)
        return x if self.encoder_norm is None else self.encoder_norm(x)


class MAPHead(nn.Module):
    """Multihead attention pooling with a learned probe. [B, L, D] (key mask [B, L]) -> [B, D]."""

    def __init__(self, width: int, num_heads: int, mlp_dim: int, activation: str, eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, width))
        self.attn = MultiHeadAttention(width, num_heads)
        self.ln = nn.LayerNorm(width, eps=eps)
        self.mlp = MlpBlock(width, mlp_dim, activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], 1, x.shape[-1])
        attn_mask = None if mask is None else mask[:, None, None, :]
        y = self.attn(probe, x, mask=attn_mask)
        y = y + self.mlp(self.ln(y))
        return y[:, 0]


def sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> torch.Tensor:
    """[1, h*w, width] row-major grid: [sin(x w_i) | cos(x w_i) | sin(y w_i) | cos(y w_i)],
    w_i = temperature ** (-i / (width/4 - 1)); float64 then fp32, as vlax computes it."""
    if width % 4:
        raise ValueError(f"sincos_2d needs a width divisible by 4, got {width}.")
    n = width // 4
    omega = 1.0 / temperature ** (torch.arange(n, dtype=torch.float64) / max(n - 1, 1))
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    ax = x.reshape(-1)[:, None] * omega[None]
    ay = y.reshape(-1)[:, None] * omega[None]
    emb = torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1)
    return emb[None].to(torch.float32)
