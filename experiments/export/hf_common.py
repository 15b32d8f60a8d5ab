"""What the Hugging Face two-tower targets (CLIPModel, SiglipModel) share: the encoder-block
name table, activation names, the check that a tower uses only options a target represents,
and the files every HF directory gets (safetensors weights, image processor, model card)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath
from safetensors.numpy import save_file

from experiments.export.mapping import Rule
from models import text as text_lib
from models import vit as vit_lib

# vlax activation -> transformers `hidden_act`.
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
HF_ACTIVATIONS = {v: k for k, v in ACTIVATIONS.items()}

# Fields that change speed or training only, never what a trained model computes.
NUMERICALLY_IRRELEVANT = {
    "scan",
    "remat",
    "remat_policy",
    "dtype",
    "matmul_dtype",
    "attn_implementation",
    "dropout",
    "head_zeroinit",
    "variant",
}


def block_rules(vlax_prefix: str, hf_prefix: str) -> list[Rule]:
    """One pre-LN encoder block, as CLIP and SigLIP name it (`{i}`: the layer index)."""
    v, h = f"{vlax_prefix}/block_{{i}}", f"{hf_prefix}.layers.{{i}}"
    rules = [
        Rule(f"{v}/ln_1/scale", f"{h}.layer_norm1.weight"),
        Rule(f"{v}/ln_1/bias", f"{h}.layer_norm1.bias"),
        Rule(f"{v}/ln_2/scale", f"{h}.layer_norm2.weight"),
        Rule(f"{v}/ln_2/bias", f"{h}.layer_norm2.bias"),
        Rule(f"{v}/attn/out/kernel", f"{h}.self_attn.out_proj.weight", "heads_out"),
        Rule(f"{v}/attn/out/bias", f"{h}.self_attn.out_proj.bias"),
        Rule(f"{v}/mlp/fc1/kernel", f"{h}.mlp.fc1.weight", "dense"),
        Rule(f"{v}/mlp/fc1/bias", f"{h}.mlp.fc1.bias"),
        Rule(f"{v}/mlp/fc2/kernel", f"{h}.mlp.fc2.weight", "dense"),
        Rule(f"{v}/mlp/fc2/bias", f"{h}.mlp.fc2.bias"),
    ]
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rules += [
            Rule(f"{v}/attn/{ours}/kernel", f"{h}.self_attn.{theirs}.weight", "heads_in"),
            Rule(f"{v}/attn/{ours}/bias", f"{h}.self_attn.{theirs}.bias", "flatten"),
        ]
    return rules


def norm_rules(vlax: str, hf: str) -> list[Rule]:
    return [Rule(f"{vlax}/scale", f"{hf}.weight"), Rule(f"{vlax}/bias", f"{hf}.bias")]


def resolved(module_cls: type, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of a tower with defaults filled and `variant` decoded into sizes."""
    module = module_cls(**dict(kwargs), parent=None)
    out = {
        f.name: getattr(module, f.name)
        for f in dataclasses.fields(module_cls)
        if f.init and f.name not in ("parent", "name")
    }
    out.update(module.config())
    return out


def image_tower(model_config: Mapping) -> dict[str, Any]:
    return resolved(vit_lib.ViT, model_config["image"])


def text_tower(model_config: Mapping) -> dict[str, Any]:
    return resolved(text_lib.TextTransformer, model_config["text"])


def field_mismatches(tower: Mapping[str, Any], required: Mapping[str, Any], what: str) -> list[str]:
    """One sentence for every field whose value differs from what the target requires."""
    return [
        f"{what}.{k}={tower[k]!r} (the target needs {v!r})"
        for k, v in required.items()
        if tower[k] != v
    ]


def non_default(
    module_cls: type, tower: Mapping[str, Any], known: Sequence[str], what: str
) -> list[str]:
    """Options set away from their default that the target has no field for."""
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(module_cls)
        if f.init and f.name not in ("parent", "name")
    }
    skip = (
        set(known)
        | NUMERICALLY_IRRELEVANT
        | {"width", "depth", "mlp_dim", "num_heads", "patch_size"}
    )
    return [
        f"{what}.{k}={tower[k]!r} has no equivalent in the target"
        for k, default in defaults.items()
        if k not in skip and tower[k] != default
    ]


def activation(tower: Mapping[str, Any], what: str) -> tuple[str | None, list[str]]:
    act = ACTIVATIONS.get(tower["activation"])
    if act is None:
        return None, [f"{what}.activation={tower['activation']!r} has no transformers name"]
    return act, []


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
