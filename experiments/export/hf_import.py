"""Pretrained transformers checkpoints as vlax towers: `config.init.hf` and the evaluators.

    towers = hf_import.tower_configs(dir)   # {"image": ViT kwargs, "text": ...} for a config
    params = hf_import.load_params(dir)     # {"img": ..., "txt": ..., "log_temp": ...}

CLIPModel and SiglipModel directories give both towers (and the loss parameters); a
BertModel directory (e.g. all-MiniLM-L6-v2) gives a text tower ("txt"), mean-pooled.
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath

from experiments.export import hf_bert, hf_export
from experiments.export.output import ExportError

TWO_TOWER = {"CLIPModel", "SiglipModel"}
TEXT_ONLY = {"BertModel", "BertForMaskedLM", "BertForPreTraining"}


def architecture(src: str) -> str:
    path = epath.Path(src) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{src} has no config.json: not a transformers model directory")
    arch = (json.loads(path.read_text()).get("architectures") or [None])[0]
    if arch not in TWO_TOWER | TEXT_ONLY:
        raise ExportError(
            f"{src}: architecture {arch!r} cannot be imported; supported: "
            f"{sorted(TWO_TOWER | TEXT_ONLY)}"
        )
    return arch


def tower_configs(src: str) -> dict[str, dict[str, Any]]:
    """The vlax tower kwargs of a checkpoint: {"image", "text"} or {"text"}."""
    if architecture(src) in TEXT_ONLY:
        hf = json.loads((epath.Path(src) / "config.json").read_text())
        return {"text": hf_bert.vlax_text_config(hf)}
    model_config, _, _ = hf_export.read(src, params=False)
    return {k: v for k, v in model_config.items() if k in ("image", "text")}


def load_params(src: str) -> dict[str, Any]:
    """Host numpy params by top-level vlax name ("img", "txt", "log_temp", "logit_bias")."""
    if architecture(src) in TEXT_ONLY:
        _, params = hf_bert.import_bert(src)
        return {"txt": params}
    _, params, _ = hf_export.read(src)
    return params
