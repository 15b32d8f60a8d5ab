"""What makes a run self-describing: checkpoint metadata, its format version, resume checks.

A checkpoint's `meta` item (JSON) carries everything needed to rebuild the model without the
launch command: the objective, the completed model config (tokenizer-dependent fields filled
in), the tokenizer's identity, the input shapes and the whole resolved run config. The workdir
also holds `config.json` (the latest launch's resolved config) and `launches.jsonl` (one line
per launch: time, command line, step it started from).

Format versions: `FORMAT_VERSION` is what this code writes. Metadata of an older version is
upgraded step by step through `MIGRATIONS` (from_version -> function(meta) -> meta of the
next version); a newer version, or a gap in the table, is an error saying what to do.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
LAUNCHES_FILE = "launches.jsonl"

# Changing these changes what a checkpoint means; a resume with other values is refused.
# Every other field (total_steps, evals, logging, checkpointing, the mesh, the schedule's
# lr) may change between launches and is logged.
MEANINGFUL_FIELDS = (
    "objective",
    "model",
    "batch_size",
    "seed",
    "data",
    "optim.name",
    "optim.freeze",
    "optim.mu_dtype",
)
# Inside the meaningful groups, fields that only change speed, not results.
HARMLESS_FIELDS = ("data.prefetch", "data.num_threads")


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different model or format."""


class ResumeConfigError(ValueError):
    """A resumed run's config changes what its checkpoint means."""


def _v1_to_v2(meta: dict) -> dict:
    # Version 1 saved no run description: such a run resumes, but its config and tokenizer
    # cannot be checked against the new launch.
    return {
        **meta,
        "format_version": 2,
        "model_config": None,
        "tokenizer": None,
        "data": None,
        "config": None,
    }


MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2}


def upgrade_meta(meta: dict, where: str) -> dict:
    """Brings checkpoint metadata of any known older format up to `FORMAT_VERSION`."""
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise CheckpointMismatchError(
            f"{where}: checkpoint metadata has no integer format_version ({version!r}); it was "
            "not written by vlax. Use a fresh --workdir."
        )
    if version > FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"{where}: checkpoint format version {version} was written by a newer vlax (this "
            f"code reads versions up to {FORMAT_VERSION}). Update the code (git pull) to resume."
        )
    while version < FORMAT_VERSION:
        if version not in MIGRATIONS:
            raise CheckpointMismatchError(
                f"{where}: checkpoint format version {version} has no migration to "
                f"{version + 1} (known: {sorted(MIGRATIONS)}). Check out the vlax commit that "
                "wrote it, or start a fresh --workdir."
            )
        meta = MIGRATIONS[version](meta)
        version = meta["format_version"]
    return meta


def param_signature(params) -> dict[str, list]:
    """{"img/embedding/kernel": [[16, 16, 3, 32], "float32"], ...} for a params tree.

    Accepts arrays, ShapeDtypeStructs or orbax array metadata (anything with shape/dtype).
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): [list(x.shape), str(np.dtype(x.dtype))]
        for p, x in leaves
    }


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for configs: ConfigDicts/FrozenDicts -> dicts, tuples -> lists, dtypes
    and other objects -> str."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def make_meta(
    config, *, model_config: Mapping, params, tokenizer: Mapping | None, data: Mapping
) -> dict[str, Any]:
    """The checkpoint metadata of a run (see the module docstring); `params` may be abstract."""
    return {
        "format_version": FORMAT_VERSION,
        "objective": config.objective,
        "params": param_signature(params),
        "model_config": to_jsonable(model_config),
        "tokenizer": to_jsonable(tokenizer),
        "data": to_jsonable(data),
        "config": to_jsonable(config),
    }


def check_same_model(saved: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """Raises CheckpointMismatchError naming how the saved objective/params differ."""
    problems = []
    if saved.get("objective") != current["objective"]:
        problems.append(f"objective {saved.get('objective')!r} != {current['objective']!r}")
    old, new = saved.get("params", {}), current["params"]
    missing = sorted(set(new) - set(old))
    extra = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if list(old[k]) != list(new[k]))
    if missing:
        problems.append(f"{len(missing)} parameters not in the checkpoint, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} checkpoint parameters not in the model, e.g. {extra[:3]}")
    for k in changed[:3]:
        problems.append(f"{k}: checkpoint {old[k]} vs model {new[k]}")
    if problems:
        raise CheckpointMismatchError(
            f"{where} holds a checkpoint of another model: " + "; ".join(problems) + ". "
            "Use a fresh --workdir (or delete the old one) to start this model."
        )


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of nested dicts (JSON-like)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def config_changes(saved: Mapping, current: Mapping) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, current value)} for every field that differs (JSON forms)."""
    old, new = flatten(to_jsonable(saved)), flatten(to_jsonable(current))
    return {
        k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    }


def check_resume(
    saved: Mapping[str, Any], current: Mapping[str, Any], where: str, allow: Sequence[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """Refuses a resume whose config or tokenizer changes what the checkpoint means.

    Returns the harmless changes (the caller logs them). `allow` lists extra fields (or
    groups) the user accepts changing (config.checkpoint.allow_resume_changes).
    """
    check_same_model(saved, current, where)
    if saved.get("config") is None:
        logging.warning(
            "%s: the checkpoint predates saved run configs; the new config "
            "cannot be checked against it.",
            where,
        )
        return {}
    changes = config_changes(saved["config"], current["config"])
    blocking = {
        k: v
        for k, v in changes.items()
        if _under(k, MEANINGFUL_FIELDS) and not _under(k, (*HARMLESS_FIELDS, *allow))
    }
    if saved.get("tokenizer") and current.get("tokenizer"):
        old, new = saved["tokenizer"].get("sha256"), current["tokenizer"].get("sha256")
        if old != new and not _under("tokenizer", allow):
            blocking["tokenizer (file contents)"] = (
                saved["tokenizer"].get("path"),
                current["tokenizer"].get("path"),
            )
    if blocking:
        lines = "\n".join(f"  {k}: checkpoint {a!r} -> now {b!r}" for k, (a, b) in blocking.items())
        raise ResumeConfigError(
            f"{where} holds a checkpoint trained with a different config; these changes would "
            f"change what it means:\n{lines}\nResume with the original values, use a fresh "
            "--workdir, or list the fields in config.checkpoint.allow_resume_changes if you "
            "really mean it."
        )
    return {k: v for k, v in changes.items() if k not in blocking}


def write_text_atomic(path: epath.Path, text: str) -> None:
    """Writes a temporary sibling and renames it over `path`: readers never see a partial
    file, and a crash leaves the previous version."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


def write_json_atomic(path: epath.Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def record_launch(
    workdir: str, config, *, start_step: int, command: Sequence[str] | None = None
) -> None:
    """Saves the resolved config as <workdir>/config.json and appends the launch to
    <workdir>/launches.jsonl (process 0 only)."""
    if jax.process_index() != 0:
        return
    root = epath.Path(workdir)
    write_json_atomic(root / CONFIG_FILE, to_jsonable(config))
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": list(sys.argv if command is None else command),
        "start_step": start_step,
        "processes": jax.process_count(),
        "devices": jax.device_count(),
    }
    path = root / LAUNCHES_FILE
    previous = path.read_text() if path.exists() else ""
    write_text_atomic(path, previous + json.dumps(line) + "\n")


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run saved in its workdir (to rebuild its model from the workdir
    alone: export, evaluation, resume)."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {workdir} is not the workdir of a vlax run (or predates "
            "saved configs; its checkpoint metadata may still hold the model config)."
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))
