"""The files every exported Hugging Face directory gets besides its config: safetensors
weights, the image processor's config and a model card (README.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath
from safetensors.numpy import save_file


def save_safetensors(state: Mapping[str, np.ndarray], path: epath.Path) -> None:
    """Writes a torch-loadable safetensors file (transformers needs format=pt)."""
    tmp = path.parent / f".{path.name}.tmp"
    # ascontiguousarray turns 0-d arrays into [1]: keep scalar shapes (CLIP's logit_scale).
    arrays = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in state.items()}
    save_file(arrays, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


def write_json(path: epath.Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def image_processor(processor_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Resize straight to S x S (bilinear) and normalise as the run's data config did."""
    size = int(data["image_size"])

    def per_channel(x):
        return [float(v) for v in np.broadcast_to(np.asarray(x, np.float64), (3,))]

    return {
        "image_processor_type": processor_type,
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 2,  # PIL bilinear, as vlax's eval transform
        "do_center_crop": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": per_channel(data.get("mean", 0.5)),
        "image_std": per_channel(data.get("std", 0.5)),
        "do_convert_rgb": True,
    }


def model_card(target: str, meta: Mapping[str, Any], step: int, results: Mapping | None) -> str:
    """README.md: what was exported, from which run and step, and the run's final metrics."""
    config = meta.get("config") or {}
    lines = [
        f"# {target} exported from a vlax run",
        "",
        f"- objective: `{meta['objective']}`"
        + (f", loss `{meta['model_config']['loss']}`" if "loss" in meta["model_config"] else ""),
        f"- checkpoint step: {step} of {config.get('total_steps')} "
        f"(batch {config.get('batch_size')}, seed {config.get('seed')})",
        f"- data: `{(meta.get('data') or {}).get('name')}`, image size "
        f"{(meta.get('data') or {}).get('image_size')}, max text length "
        f"{(meta.get('data') or {}).get('max_len')}",
        f"- tokenizer: `{(meta.get('tokenizer') or {}).get('path')}` "
        f"(sha256 {(meta.get('tokenizer') or {}).get('sha256', '')[:12]}...)",
        "",
        "## Model config (vlax)",
        "",
        "```json",
        json.dumps(meta["model_config"], indent=1, sort_keys=True),
        "```",
        "",
        "## Final evaluation of the run",
        "",
    ]
    if not results:
        lines.append("No evaluation results were recorded for this run.")
    for name, metrics in sorted((results or {}).items()):
        shown = ", ".join(
            f"{k} {v:.4f}"
            for k, v in sorted(metrics.items())
            if isinstance(v, float | int) and not k.startswith("chance_")
        )
        lines.append(f"- {name}: {shown}")
    return "\n".join(lines) + "\n"
