"""`--format hf`: write a vlax two-tower run as the exact transformers class (reading one
back is experiments/interop/hf_import.py).

Targets: `hf_clip` (CLIPModel) and `hf_siglip` (SiglipModel). A model matching neither is
refused with each target's mismatches and the alternative (`--format torch`).
`write_bert` writes a standalone text tower as a `BertModel` (experiments/interop/hf_bert.py
has its name table and config).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from etils import epath

from experiments.export import hf_files, tokenizer_files
from experiments.export.output import ExportError
from experiments.interop import hf_bert, hf_clip, hf_import, hf_siglip, mapping

TARGETS = hf_import.TWO_TOWER_TARGETS
_TOKENIZER_WRITERS = {
    hf_clip.NAME: tokenizer_files.write_fast,
    hf_siglip.NAME: tokenizer_files.write_siglip,
}
_PROCESSORS = {hf_clip.NAME: "CLIPImageProcessor", hf_siglip.NAME: "SiglipImageProcessor"}


def choose_target(meta: Mapping[str, Any]):
    """The transformers target matching the run exactly, or ExportError naming why none does."""
    if meta["objective"] != "contrastive":
        raise ExportError(
            f"--format hf has no target for objective {meta['objective']!r}; use --format torch"
        )
    found = {t.NAME: t.mismatches(meta["model_config"], meta) for t in TARGETS}
    exact = [t for t in TARGETS if not found[t.NAME]]
    if exact:
        return exact[0]
    lines = "\n".join(f"  {name}: " + "; ".join(problems) for name, problems in found.items())
    raise ExportError(
        f"This model has no exact transformers equivalent:\n{lines}\n"
        "Use --format torch for a numerically identical plain PyTorch model."
    )


def write(out: epath.Path, params, meta: Mapping[str, Any], target) -> list[str]:
    """Writes config.json, model.safetensors, tokenizer and image-processor files."""
    state = mapping.to_torch(params, target.rules(), where=f"export to {target.NAME}")
    notes = []
    if target is hf_clip:
        state = hf_clip.clamp_scale(state)
        notes.append("logit_scale exported clamped at log(100), as vlax's loss applies it")
    hf_files.write_json(out / "config.json", target.hf_config(meta["model_config"], meta))
    hf_files.save_safetensors(state, out / "model.safetensors")
    max_len = int(meta["data"]["max_len"])
    if meta.get("tokenizer"):
        notes += _TOKENIZER_WRITERS[target.NAME](out, meta["tokenizer"], max_len)
    else:
        notes.append("no tokenizer recorded in the checkpoint: none written")
    processor = hf_files.image_processor(_PROCESSORS[target.NAME], meta["data"])
    hf_files.write_json(out / "preprocessor_config.json", processor)
    return notes


def write_bert(params: Any, text_config: dict, out_dir: str | epath.PathLike) -> epath.Path:
    """Writes a standalone text tower's "params" tree (scanned or not) as a BertModel folder:
    config.json + model.safetensors (float32, metadata {"format": "pt"}). Returns out_dir.

    A ValueError names a `text_config` field BertModel cannot express; a MappingError names
    a parameter it has no place for (a projection "head", a "map_head", ...).
    """
    hf = hf_bert.hf_bert_config(text_config)
    state = mapping.to_torch(params, hf_bert.rules("", ""), where="export to BertModel")
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_files.write_json(out_dir / "config.json", hf)
    hf_files.save_safetensors(state, out_dir / "model.safetensors")
    return out_dir
