"""Checkpoints: orbax CheckpointManager over a stable, versioned tree layout.

Layout under `<workdir>/checkpoints/<step>/`:
  state/  {"step", "params", "opt_state"} (sharded arrays; restorable onto any mesh)
  data/   JSON {"iterator": <input pipeline state>}
  meta/   JSON (see `run_meta.make_meta`): format version, objective, parameter signature,
          model config, tokenizer identity, data shapes and the resolved run config

orbax writes each step into a temporary folder and renames it when complete, so a
killed run never leaves a half-written checkpoint that a resume would pick up.
Metadata written by an older format is brought up to date by `run_meta.upgrade_meta`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from experiments.training import run_meta

CHECKPOINT_SUBDIR = "checkpoints"
CheckpointMismatchError = run_meta.CheckpointMismatchError


def resolve(path: str) -> str:
    """Absolute local path; URIs (gs://, s3://) are left as they are."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def checkpoint_dir(path: str) -> epath.Path:
    """Accepts a workdir or its checkpoints/ folder."""
    path = epath.Path(resolve(path))
    sub = path / CHECKPOINT_SUBDIR
    return sub if sub.is_dir() else path


def latest_step(workdir: str) -> int | None:
    """The newest finished checkpoint step in a workdir, without creating anything."""
    directory = epath.Path(resolve(workdir)) / CHECKPOINT_SUBDIR
    if not directory.is_dir():
        return None
    steps = ocp.utils.checkpoint_steps(directory)
    return max(steps) if steps else None


def _read_only_manager(directory: epath.Path, **item_handlers) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers=item_handlers or None,
    )


def _resolve_step(manager: ocp.CheckpointManager, directory, step: int | None) -> int:
    available = sorted(manager.all_steps())
    step = max(available) if step is None and available else step
    if step is None or step not in available:
        raise FileNotFoundError(
            f"No checkpoint step {step if step is not None else '(any)'} in {directory}; "
            f"available: {available}."
        )
    return step


def _require_dir(directory: epath.Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(
            f"No checkpoint folder at {directory}. Point at the workdir of a run that saved a "
            "checkpoint (it holds checkpoints/<step>/)."
        )


def read_meta(path: str, step: int | None = None) -> tuple[dict, int]:
    """(metadata upgraded to the current format, step) of a workdir's checkpoint.

    Reads only the small JSON item: nothing is restored or compiled.
    """
    directory = checkpoint_dir(path)
    _require_dir(directory)
    manager = _read_only_manager(directory, meta=ocp.JsonCheckpointHandler())
    step = _resolve_step(manager, directory, step)
    raw = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    manager.close()
    return run_meta.upgrade_meta(dict(raw["meta"]), f"{directory}/{step}"), step


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


def _params_metadata(path: str, step: int | None) -> tuple[Any, int]:
    """orbax's array metadata (shape, dtype) of a checkpoint's params: nothing is read."""
    directory = checkpoint_dir(path)
    _require_dir(directory)
    manager = _read_only_manager(directory, state=ocp.StandardCheckpointHandler())
    step = _resolve_step(manager, directory, step)
    tree = manager.item_metadata(step)["state"]["params"]
    manager.close()
    return tree, step


def saved_param_signature(path: str, step: int | None = None) -> tuple[dict, int]:
    """{param path: [shape, dtype]} of a checkpoint, from its metadata only."""
    tree, step = _params_metadata(path, step)
    return run_meta.param_signature(tree), step


def load_param_subtrees(
    path: str, step: int | None, targets: Mapping[str, Any]
) -> tuple[dict[str, Any], int]:
    """Reads only `params/<name>` for each name in `targets`, directly into their shardings.

    `targets[name]` is a tree of jax.ShapeDtypeStruct (with `sharding`) shaped like the
    saved subtree; the optimizer state and the other parameters are never read.
    """
    directory = checkpoint_dir(path)
    _require_dir(directory)
    manager = _read_only_manager(directory, state=ocp.PyTreeCheckpointHandler())
    step = _resolve_step(manager, directory, step)
    item = {"params": dict(targets)}
    out = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            )
        ),
    )
    manager.close()
    params = out["state"]["params"]
    return {name: params[name] for name in targets}, step


def load_params(path: str, step: int | None = None) -> tuple[dict, int]:
    """Loads all params of a checkpoint as host numpy arrays (tests, export).

    `path` is a workdir or its checkpoints/ folder; `step` defaults to the latest.
    """
    tree, step = _params_metadata(path, step)
    # An explicit single-device target: the saved shardings may name devices of another
    # topology (a pod, or several processes) that this process cannot address.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), dict(tree)
    )
    params, step = load_param_subtrees(path, step, abstract)
    return jax.tree.map(np.asarray, params), step
