"""What the Hugging Face two-tower targets (CLIPModel, SiglipModel) share: the encoder-block
name table, activation names and the check that a tower uses only options a target
represents. (The files an exported HF directory gets are written by export/hf_files.py.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.interop.mapping import Rule
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
