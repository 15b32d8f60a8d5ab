"""`--format torch`: a run as the repo's plain PyTorch modules (experiments/export/torch_models).

Writes config.json, model.safetensors (fp32) and tokenizer.model into a directory that
`experiments.export.torch_models.load` turns into the module of the run's objective
(`meta["objective"]`, recorded in config.json), computing what the vlax model computes
(torch_models/files.py: the layout). What is particular to an objective (its name table,
the options it cannot mirror, its notes, its parameter shapes and scanned scopes) its family
declares in experiments/export/families; here is the generic write and read, where one name
table per model config (`rules`) serves export and import, scanned (stacked "blocks") or not.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import torch
from etils import epath
from safetensors import numpy as safetensors_np

from experiments.export import families
from experiments.export.torch_models import files, loading
from experiments.interop import mapping
from experiments.interop.mapping import Rule

NAME = "torch"
OBJECTIVE = "contrastive"  # the objective of metadata that names none


def rules(model_config: Mapping[str, Any], objective: str = OBJECTIVE) -> list[Rule]:
    """The vlax <-> torch_models name table of one model config of `objective`."""
    family = families.get(objective)
    return family.rules(family.complete(model_config))


def mismatches(model_config: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> list[str]:
    """One sentence per option of this run that the torch modules cannot mirror ([] = ok)."""
    if not model_config:
        return ["the checkpoint metadata holds no model config (a run older than format 2)."]
    try:
        problems = families.get(meta.get("objective", OBJECTIVE)).mismatches(model_config)
    except ValueError as e:  # an objective without an export declaration
        problems = [f"--format torch: {e}"]
    data = meta.get("data") or {}
    missing = [k for k in ("image_size", "mean", "std", "max_len") if k not in data]
    if missing:
        problems.append(f"the checkpoint metadata's data description lacks {missing}.")
    return problems


def _check_state(
    state: Mapping[str, np.ndarray], objective: str, cfg: Mapping[str, Any], size: int
) -> None:
    """The exported tensors are exactly the torch module's state dict (names and shapes)."""
    with torch.device("meta"):
        module = loading.MODULES[objective](cfg, size)
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))
        raise mapping.MappingError(f"torch export: tensors differ from the module's: {diff[:6]}")


def _tokenizer(out_dir: epath.Path, tok: Mapping[str, Any] | None) -> tuple[dict | None, str]:
    """Copies the run's tokenizer file; returns (its config entry, a note)."""
    if not tok or not tok.get("path"):
        return tok, "the run recorded no tokenizer file: none copied."
    src = epath.Path(tok["path"])
    if not src.exists():
        return dict(tok), f"tokenizer {src} not found: not copied (copy it by hand)."
    data = src.read_bytes()
    if tok.get("sha256") and hashlib.sha256(data).hexdigest() != tok["sha256"]:
        raise ValueError(
            f"{src} is not the tokenizer the run trained with (its sha256 differs from the "
            "checkpoint metadata's): restore the original file before exporting."
        )
    (out_dir / files.TOKENIZER_FILE).write_bytes(data)
    return {**tok, "file": files.TOKENIZER_FILE}, f"copied tokenizer {src}."


def write(out_dir: epath.Path, params: Any, meta: Mapping[str, Any]) -> list[str]:
    """Writes config.json, model.safetensors (fp32) and tokenizer.model; returns notes.

    params: the checkpoint's params tree (host arrays, any float dtype, scanned or not).
    """
    problems = mismatches(meta.get("model_config"), meta)
    if problems:
        raise ValueError("cannot export to --format torch: " + " ".join(problems))
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objective = meta.get("objective", OBJECTIVE)
    family = families.get(objective)
    cfg = family.complete(meta["model_config"])
    data = meta["data"]
    state = mapping.to_torch(params, family.rules(cfg), where="torch export")
    _check_state(state, objective, cfg, data["image_size"])
    blob = safetensors_np.save(state, metadata={"format": "pt"})
    (out_dir / files.WEIGHTS_FILE).write_bytes(blob)
    dtypes = sorted({str(np.dtype(x.dtype)) for x in jax.tree.leaves(params)})
    notes = [
        f"wrote {len(state)} tensors ({sum(x.size for x in state.values()):,} values) "
        f"as float32 from {'/'.join(dtypes)} params."
    ]
    notes += family.notes(cfg)
    tok, note = _tokenizer(out_dir, meta.get("tokenizer"))
    notes.append(note)
    config = {
        "objective": objective,
        "model_config": cfg,
        "tokenizer": tok,
        **{k: data[k] for k in ("image_size", "mean", "std", "max_len")},
    }
    (out_dir / files.CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))
    return notes


def _rescan(params: dict, scope: str) -> dict:
    """Stacks "<scope>/block_{i}/..." back into "<scope>/blocks/..." [depth, ...] (the
    inverse of `mapping.unscan`) for blocks trained with scan=True."""
    flat, stacks = {}, {}
    block = re.compile(rf"^({re.escape(scope)})/block_(\d+)/(.*)$")
    for path, x in mapping.flatten_params(params).items():
        m = block.match(path)
        if m:
            stacks.setdefault(f"{m[1]}/blocks/{m[3]}", {})[int(m[2])] = x
        else:
            flat[path] = x
    for path, layers in stacks.items():
        flat[path] = np.stack([layers[i] for i in range(len(layers))])
    return mapping.unflatten_params(flat)


def read(src_dir: str | epath.Path) -> tuple[dict, dict]:
    """(model_config, vlax params tree of numpy fp32 arrays) of an exported directory."""
    src = epath.Path(src_dir)
    config = json.loads((src / files.CONFIG_FILE).read_text())
    family = families.get(config.get("objective", OBJECTIVE))
    cfg = family.complete(config["model_config"])
    state = safetensors_np.load((src / files.WEIGHTS_FILE).read_bytes())
    abstract = family.abstract_params(cfg, config["image_size"])
    params = mapping.from_torch(state, family.rules(cfg), abstract, where=f"import {src}")
    for scope in family.scanned(cfg):
        params = _rescan(params, scope)
    return cfg, params
