"""The files of an exported directory (written by experiments/export/torch_target.py):

config.json        {"objective": "contrastive" | "prefix_lm" (absent: "contrastive"),
                    "model_config": {...}, "image_size", "mean", "std", "max_len",
                    "tokenizer": {... "file": "tokenizer.model" when copied}}
model.safetensors  the fp32 state dict of the objective's module
tokenizer.model    the run's sentencepiece model (when the run had one)
"""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"

M = TypeVar("M", bound=torch.nn.Module)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The exported config.json of `directory`."""
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        return json.load(f)


def load_weights(model: M, directory: str | os.PathLike, device: str | torch.device) -> M:
    """`model` with the exported state dict of `directory` (strict), fp32, in eval mode."""
    state = load_file(os.path.join(directory, WEIGHTS_FILE), device=str(device))
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=torch.float32).eval()
