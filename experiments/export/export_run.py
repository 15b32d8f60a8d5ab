"""Export a vlax run's checkpoint: the library behind `python -m experiments.export`."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable

from etils import epath

from experiments.export import hf_export, hf_files, output, torch_target
from experiments.training import checkpointing, eval_runner

FORMATS = ("hf", "torch")


def _writer(fmt: str, meta: dict) -> tuple[str, Callable]:
    """(target name, write(out, params, meta) -> notes), or ExportError naming why not."""
    if fmt == "hf":
        target = hf_export.choose_target(meta)
        return target.name, functools.partial(hf_export.write, target=target)
    problems = torch_target.mismatches(meta["model_config"], meta)
    if problems:
        raise output.ExportError("--format torch cannot represent: " + "; ".join(problems))
    return torch_target.NAME, torch_target.write


def _final_results(workdir: str) -> dict | None:
    path = epath.Path(workdir) / eval_runner.RESULTS_FILE
    if not path.exists():
        return None
    history = json.loads(path.read_text())
    return history[max(history, key=int)] if history else None


def export_run(
    workdir: str, fmt: str, out: str, *, step: int | None = None, overwrite: bool = False
) -> dict:
    """Exports the run in `workdir` (latest or `step`) as `fmt` into `out`.

    Every check (format, output directory, checkpoint and step, model config, target
    compatibility) runs before any parameter is read. Returns a summary dict.
    """
    if fmt not in FORMATS:
        raise output.ExportError(f"--format {fmt!r} is unknown; use one of {FORMATS}")
    out_path = epath.Path(checkpointing.resolve(out))
    output.check_out(out_path, overwrite)
    meta, step = checkpointing.read_meta(workdir, step)
    if meta.get("model_config") is None:
        raise output.ExportError(
            f"{workdir}: its checkpoint (format version 1) predates saved model configs. "
            "Resume the run for one step with this vlax version (its next checkpoint carries "
            "the config), then export that step."
        )
    name, write = _writer(fmt, meta)
    t0 = time.perf_counter()
    params, _ = checkpointing.load_params(workdir, step)
    with output.staged(out_path, overwrite) as stage:
        notes = write(stage, params, meta)
        card = hf_files.model_card(name, meta, step, _final_results(workdir))
        (stage / "README.md").write_text(card)
    seconds = time.perf_counter() - t0
    for note in notes:
        logging.info("export: %s", note)
    return {"target": name, "step": step, "out": str(out_path), "seconds": seconds, "notes": notes}
