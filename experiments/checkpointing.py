"""Checkpoints: orbax CheckpointManager over a stable, versioned tree layout.

Layout under `<workdir>/checkpoints/<step>/`:
  state/  {"step", "params", "opt_state"} (sharded arrays; restorable onto any mesh)
  data/   JSON {"iterator": <input pipeline state>}
  meta/   JSON {"format_version", "objective", "params": {path: [shape, dtype]}}

orbax writes each step into a temporary folder and renames it when complete, so a
killed run never leaves a half-written checkpoint that a resume would pick up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

FORMAT_VERSION = 1
CHECKPOINT_SUBDIR = "checkpoints"


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different model or format."""


def param_signature(params) -> dict[str, list]:
    """{"img/embedding/kernel": [[16, 16, 3, 32], "float32"], ...} for a params tree."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): [list(x.shape), str(np.dtype(x.dtype))]
        for p, x in leaves
    }


def make_meta(objective: str, params) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "objective": objective,
        "params": param_signature(params),
    }


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """Raises CheckpointMismatchError naming the differences between two metas."""
    problems = []
    if saved.get("format_version") != current["format_version"]:
        problems.append(
            f"format_version {saved.get('format_version')} != {current['format_version']}"
        )
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


def resolve(path: str) -> str:
    """Absolute local path; URIs (gs://, s3://) are left as they are."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def checkpoint_dir(path: str) -> str:
    """Accepts a workdir or its checkpoints/ folder."""
    path = resolve(path)
    sub = epath.Path(path) / CHECKPOINT_SUBDIR
    return str(sub) if sub.is_dir() else path


def latest_step(workdir: str) -> int | None:
    """The newest finished checkpoint step in a workdir, without creating anything."""
    directory = epath.Path(resolve(workdir)) / CHECKPOINT_SUBDIR
    if not directory.is_dir():
        return None
    steps = ocp.utils.checkpoint_steps(directory)
    return max(steps) if steps else None


class Checkpointer:
    """Periodic save / exact resume of train state, input-pipeline state and metadata."""

    def __init__(self, workdir: str, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = str(epath.Path(resolve(workdir)) / CHECKPOINT_SUBDIR)
        self.every_steps = max(1, save_every)
        # The trainer decides when to save (every_steps and the last step); orbax only keeps K.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def read_meta(self, step: int) -> dict:
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def save(self, step: int, state, data_state: str | None, meta: dict) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"iterator": data_state}),
            meta=ocp.args.JsonSave(meta),
        )
        return self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state) -> tuple[Any, str | None]:
        """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs)."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        # Keep the caller's container types (optax NamedTuples) exactly.
        leaves = jax.tree.leaves(out["state"])
        state = jax.tree.unflatten(jax.tree.structure(abstract_state), leaves)
        return state, out["data"]["iterator"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(path: str, step: int | None = None) -> tuple[dict, int]:
    """Loads the params of a checkpoint as host numpy arrays (for LiT-style init).

    `path` is a workdir or its checkpoints/ folder; `step` defaults to the latest.
    """
    directory = checkpoint_dir(path)
    if not epath.Path(directory).is_dir():
        raise FileNotFoundError(
            f"No checkpoint folder at {directory}. Point config.init.checkpoint at the workdir "
            "of a finished run (it holds checkpoints/<step>/)."
        )
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(
            f"No checkpoint step {step if step is not None else '(any)'} in {directory}; "
            f"available: {sorted(manager.all_steps())}."
        )
    # An explicit single-device target: the saved shardings may name devices of another
    # topology (a pod, or several processes) that this process cannot address.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(step)["state"],
    )
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    manager.close()
    return jax.tree.map(np.asarray, out["state"]["params"]), step
