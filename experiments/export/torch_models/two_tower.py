"""PyTorch mirror of objectives/contrastive.py `TwoTower` and the loader of its exports.

An exported directory (written by experiments/export/torch_target.py, layout in files.py)
holds config.json, model.safetensors (the fp32 state dict of `TwoTower`) and tokenizer.model.

Inputs, as the run's data pipeline made them:
  images  [B, H, W, 3] float32, channels last (NHWC), H = W = image_size, values
          (rgb_uint8 / 255 - mean) / std with config.json's mean/std (scalars or per channel);
  tokens  [B, L] int ids from tokenizer.model, L <= max_len, padded with the text
          config's pad_id (the run pads to max_len; padding never changes the embedding).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import config as config_lib
from . import towers
from .files import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, load_weights, read_config

__all__ = [
    "CONFIG_FILE",
    "TOKENIZER_FILE",
    "WEIGHTS_FILE",
    "TwoTower",
    "l2_normalize",
    "load",
    "read_config",
]


def l2_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / max(|x|, eps) along the last axis, as vlax's `l2_normalize`."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True).clamp_min(eps * eps))


class TwoTower(nn.Module):
    """Contrastive image-text model built from a vlax two-tower model config.

    model_config: {"image": ViT fields, "text": TextTransformer fields, "loss", ...} as in a
    checkpoint's metadata (absent fields take the vlax defaults); image_size: the training
    resolution (sizes a learned position table).
    """

    def __init__(self, model_config: Mapping[str, Any], image_size: int):
        super().__init__()
        cfg = config_lib.complete_two_tower(model_config)
        if cfg["loss"] not in config_lib.LOSSES:
            raise ValueError(f"Unknown loss {cfg['loss']!r}: use one of {config_lib.LOSSES}.")
        self.loss = cfg["loss"]
        self.img = towers.ViT(cfg["image"], image_size)
        self.txt = towers.TextTransformer(cfg["text"])
        self.log_temp = nn.Parameter(torch.zeros(()))
        self.logit_bias = nn.Parameter(torch.zeros(())) if self.loss == "sigmoid" else None

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] float (NHWC, normalised) -> L2-normalised [B, D]."""
        return l2_normalize(self.img(images))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L] int token ids -> L2-normalised [B, D]."""
        return l2_normalize(self.txt(tokens))

    def logit_scale(self) -> torch.Tensor:
        """The scalar the loss multiplies cosines by (softmax: capped at 100, as in CLIP)."""
        if self.loss == "softmax":
            return self.log_temp.clamp_max(config_lib.SOFTMAX_MAX_LOG_TEMP).exp()
        return self.log_temp.exp()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """images [B, H, W, 3], tokens [C, L] -> logits [B, C] as the training loss sees them:
        scale * cos (+ logit_bias for sigmoid; sigmoid(logits) is the match probability)."""
        logits = self.logit_scale() * (self.encode_image(images) @ self.encode_text(tokens).T)
        return logits if self.logit_bias is None else logits + self.logit_bias


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> TwoTower:
    """The exported two-tower model in `directory`, fp32, in eval mode."""
    cfg = read_config(directory)
    return load_weights(TwoTower(cfg["model_config"], cfg["image_size"]), directory, device)
