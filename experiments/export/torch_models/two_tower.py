"""PyTorch mirror of objectives/contrastive.py `TwoTower` and the loader of exported runs.

An exported directory (written by experiments/export/torch_target.py) holds:
  config.json        {"model_config": {...}, "image_size", "mean", "std", "max_len",
                      "tokenizer": {... "file": "tokenizer.model" when copied}}
  model.safetensors  the fp32 state dict of `TwoTower`
  tokenizer.model    the run's sentencepiece model (when the run had one)

Inputs, as the run's data pipeline made them:
  images  [B, H, W, 3] float32, channels last (NHWC), H = W = image_size, values
          (rgb_uint8 / 255 - mean) / std with config.json's mean/std (scalars or per channel);
  tokens  [B, L] int ids from tokenizer.model, L <= max_len, padded with the text
          config's pad_id (the run pads to max_len; padding never changes the embedding).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from . import config as config_lib
from . import towers

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"


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


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The exported config.json of `directory`."""
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        return json.load(f)


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> TwoTower:
    """The exported model in `directory`, fp32, in eval mode (see the module docstring)."""
    cfg = read_config(directory)
    model = TwoTower(cfg["model_config"], cfg["image_size"])
    state = load_file(os.path.join(directory, WEIGHTS_FILE), device=str(device))
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=torch.float32).eval()
