"""`--format hf`: write vlax params as the exact transformers class (reading one back is
experiments/interop/hf_import.py).

A run exports to the first of its family's Hugging Face targets (experiments/export/families:
`CLIPModel`, `SiglipModel` for contrastive runs) that represents it exactly; a run matching
none is refused with each target's mismatches and the alternative (`--format torch`).
`write_bert` writes a standalone text tower as a `BertModel` (experiments/interop/hf_bert.py
has its name table and config).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from etils import epath

from experiments.export import families, hf_files
from experiments.export.output import ExportError
from experiments.interop import hf_bert, mapping


def choose_target(meta: Mapping[str, Any]) -> families.HFTarget:
    """The transformers target matching the run exactly, or ExportError naming why none does."""
    try:
        targets = families.get(meta["objective"]).hf_targets
    except ValueError as e:
        raise ExportError(f"--format hf: {e}") from None
    if not targets:
        raise ExportError(
            f"--format hf has no target for objective {meta['objective']!r}; use --format torch"
        )
    found = {t.name: t.table.mismatches(meta["model_config"], meta) for t in targets}
    exact = [t for t in targets if not found[t.name]]
    if exact:
        return exact[0]
    lines = "\n".join(f"  {name}: " + "; ".join(problems) for name, problems in found.items())
    raise ExportError(
        f"This model has no exact transformers equivalent:\n{lines}\n"
        "Use --format torch for a numerically identical plain PyTorch model."
    )


def write(out: epath.Path, params, meta: Mapping[str, Any], target: families.HFTarget) -> list[str]:
    """Writes config.json, model.safetensors, tokenizer and image-processor files."""
    state = mapping.to_torch(params, target.table.rules(), where=f"export to {target.name}")
    notes = []
    if target.finish is not None:
        state, finish_notes = target.finish(state)
        notes += finish_notes
    hf_files.write_json(out / "config.json", target.table.hf_config(meta["model_config"], meta))
    hf_files.save_safetensors(state, out / "model.safetensors")
    max_len = int(meta["data"]["max_len"])
    if meta.get("tokenizer"):
        notes += target.write_tokenizer(out, meta["tokenizer"], max_len)
    else:
        notes.append("no tokenizer recorded in the checkpoint: none written")
    processor = hf_files.image_processor(target.processor, meta["data"])
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
