"""PyTorch mirrors of the vlax towers: models/vit.py `ViT` and models/text.py `TextTransformer`.

Each takes the tower's vlax config dict (absent fields take the vlax defaults, `variant`
decodes to sizes) and computes what the vlax tower computes at inference (no dropout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import config as config_lib
from . import layers


def _encoder(
    cfg: Mapping[str, Any], causal: bool = False, post_norm: bool = False
) -> layers.Encoder:
    return layers.Encoder(
        width=cfg["width"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_dim=cfg["mlp_dim"],
        activation=cfg["activation"],
        norm_eps=cfg["norm_eps"],
        final_norm=cfg["final_norm"],
        causal=causal,
        post_norm=post_norm,
    )


def _map_head(cfg: Mapping[str, Any]) -> layers.MAPHead:
    return layers.MAPHead(
        cfg["width"], cfg["num_heads"], cfg["mlp_dim"], cfg["activation"], cfg["norm_eps"]
    )


def _head(cfg: Mapping[str, Any]) -> nn.Linear | None:
    if cfg["num_classes"] is None:
        return None
    return nn.Linear(cfg["width"], cfg["num_classes"], bias=cfg["head_bias"])


def _check(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}: use one of {allowed}.")


class ViT(nn.Module):
    """Vision Transformer. pixels [B, H, W, 3] float (NHWC, as vlax) -> [B, num_classes or D]
    ([B, N, D] for pool_type "none").

    `image_size` sizes the learned position table (vlax's table is fixed at the training
    resolution); sincos2d embeddings follow the input grid.
    """

    def __init__(self, config: Mapping[str, Any], image_size: int):
        super().__init__()
        cfg = config_lib.sizes(config_lib.complete(config, config_lib.VIT_DEFAULTS))
        _check("pool_type", cfg["pool_type"], config_lib.IMAGE_POOLS)
        _check("posemb", cfg["posemb"], config_lib.POSEMBS)
        _check("activation", cfg["activation"], config_lib.ACTIVATIONS)
        self.config = cfg
        width, p = cfg["width"], cfg["patch_size"]
        self.embedding = nn.Conv2d(3, width, p, stride=p, bias=cfg["patch_bias"])
        self.num_prefix = 1 if cfg["pool_type"] == "cls" else 0
        self.cls = nn.Parameter(torch.zeros(1, 1, width)) if self.num_prefix else None
        n = self.num_prefix + (image_size // p) ** 2
        learn = cfg["posemb"] == "learn"
        self.pos_embedding = nn.Parameter(torch.zeros(1, n, width)) if learn else None
        self.ln_pre = nn.LayerNorm(width, eps=cfg["norm_eps"]) if cfg["ln_pre"] else None
        self.encoder = _encoder(cfg)
        self.map_head = _map_head(cfg) if cfg["pool_type"] == "map" else None
        self.head = _head(cfg)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = pixels.shape
        p = self.config["patch_size"]
        if h % p or w % p:
            raise ValueError(f"Image size {h}x{w} is not a multiple of the patch size {p}.")
        x = self.embedding(pixels.permute(0, 3, 1, 2))  # [B, D, h/p, w/p]
        x = x.flatten(2).transpose(1, 2)  # row-major patches [B, N, D], as vlax reshapes
        if self.cls is not None:
            x = torch.cat([self.cls.expand(b, 1, x.shape[-1]), x], dim=1)
        if self.pos_embedding is not None:
            if self.pos_embedding.shape[1] != x.shape[1]:
                raise ValueError(
                    f"Learned position table has {self.pos_embedding.shape[1]} rows but the "
                    f"{h}x{w} input gives {x.shape[1]} tokens: use the training image size."
                )
            x = x + self.pos_embedding
        else:
            emb = layers.sincos_2d(h // p, w // p, x.shape[-1]).to(x.device)
            x = x + nn.functional.pad(emb, (0, 0, self.num_prefix, 0))  # cls row: zeros
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        x = self.encoder(x)
        pool = self.config["pool_type"]
        if pool == "cls":
            x = x[:, 0]
        elif pool == "gap":
            x = x.mean(dim=1)
        elif pool == "map":
            x = self.map_head(x)
        return x if self.head is None else self.head(x)


class TextTransformer(nn.Module):
    """Text encoder. token ids [B, L] int, L <= max_len -> [B, num_classes or D].

    Tokens equal to `pad_id` are masked out of attention keys and of mean/MAP pooling
    (`mask_padding=False`: treated like any other token there). Pooling: "eos" = the first
    `eos_id` token (rows without one, or all rows when eos_id is None, take the last non-pad
    token); "first" = position 0; "last" = the last non-pad token (position 0 for an all-pad
    row); "final" = position L-1; "mean" over non-pad tokens; "map" attention pooling.
    BERT options: `post_norm` blocks, `embed_norm` ("embedding_norm" on the summed
    embeddings), `type_vocab_size` > 0 (a "type_embedding" table; every token has type 0).
    """

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        cfg = config_lib.sizes(config_lib.complete(config, config_lib.TEXT_DEFAULTS))
        _check("pool_type", cfg["pool_type"], config_lib.TEXT_POOLS)
        _check("activation", cfg["activation"], config_lib.ACTIVATIONS)
        self.config = cfg
        width = cfg["width"]
        self.token_embedding = nn.Embedding(cfg["vocab_size"], width)
        self.pos_embedding = nn.Parameter(torch.zeros(cfg["max_len"], width))
        types = cfg["type_vocab_size"]
        self.type_embedding = nn.Embedding(types, width) if types > 0 else None
        self.embedding_norm = (
            nn.LayerNorm(width, eps=cfg["norm_eps"]) if cfg["embed_norm"] else None
        )
        self.encoder = _encoder(cfg, causal=cfg["causal"], post_norm=cfg["post_norm"])
        self.map_head = _map_head(cfg) if cfg["pool_type"] == "map" else None
        self.head = _head(cfg)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        length = tokens.shape[1]
        if length > cfg["max_len"]:
            raise ValueError(f"Token length {length} exceeds max_len={cfg['max_len']}.")
        tokens = tokens.long()
        valid = tokens != cfg["pad_id"]  # [B, L]
        key_mask = valid if cfg["mask_padding"] else None
        x = self.token_embedding(tokens) + self.pos_embedding[None, :length]
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[0]  # type 0 for every token
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.encoder(x, None if key_mask is None else key_mask[:, None, None, :])
        pool = cfg["pool_type"]
        if pool == "first":
            x = x[:, 0]
        elif pool == "final":
            x = x[:, -1]
        elif pool == "mean" and key_mask is None:
            x = x.mean(dim=1)
        elif pool == "mean":
            weights = key_mask.to(x.dtype)[..., None]
            x = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        elif pool == "map":
            x = self.map_head(x, key_mask)
        else:
            x = x[torch.arange(x.shape[0], device=x.device), self._pool_index(tokens, valid)]
        return x if self.head is None else self.head(x)

    def _pool_index(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[B] position pooled by "eos" / "last"."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        last_valid = torch.where(valid, positions, 0).amax(dim=1)
        eos_id = self.config["eos_id"]
        if self.config["pool_type"] == "last" or eos_id is None:
            return last_valid
        is_eos = tokens == eos_id
        first_eos = is_eos.int().argmax(dim=1)  # first maximum, as jnp.argmax
        return torch.where(is_eos.any(dim=1), first_eos, last_valid)
