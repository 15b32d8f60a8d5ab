"""Runs the evaluators due at a step and records their results as each one finishes.

`<workdir>/eval_results.json` is {step: {evaluator: {metric: value}}}, rewritten atomically
after every evaluator, so a crash or a failing evaluator never loses another's results. A
failing evaluator is logged with its traceback and recorded as {"error": "..."}; the others
still run, and the trainer raises `EvaluationError` once training and saving are done.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from experiments.evaluators import host_rows
from experiments.training import run_meta, sharding

RESULTS_FILE = "eval_results.json"


class EvaluationError(RuntimeError):
    """One or more evaluators failed (their errors are in eval_results.json)."""


def check_methods(model, evaluators: dict) -> None:
    """Every method an evaluator names must exist on the objective (before anything compiles)."""
    for name, evaluator in evaluators.items():
        missing = [m for m in evaluator.methods if not callable(getattr(model, m, None))]
        if missing:
            raise ValueError(
                f"evals.{name} needs the objective method(s) {missing}, which "
                f"{type(model).__name__} does not have."
            )


def make_predict_fns(model, methods) -> dict[str, Callable]:
    """One jitted (params, arrays, static kwargs) -> outputs per named method, built once so
    evaluations never recompile (static kwargs are part of the cache key)."""

    def make(method):
        def apply(params, arrays, static):
            return model.apply({"params": params}, *arrays, method=method, **dict(static))

        return jax.jit(apply, static_argnums=(2,))

    return {m: make(m) for m in methods}


def _on_devices(fn, params, mesh):
    batch_sharding = sharding.batch_sharding(mesh)

    def place(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, batch_sharding, lambda i: x[i])

    # Place each local device's slice of the rows (under multi-host evaluation a host holds
    # only those: evaluators/host_rows.py), then gather the outputs back to every host.
    def run(*arrays, **static):
        out = fn(params, tuple(place(x) for x in arrays), tuple(sorted(static.items())))
        gathered = multihost_utils.process_allgather(out, tiled=True)
        return jax.tree.map(np.asarray, gathered)

    return run


def _record(workdir: str, step: int, name: str, result: dict) -> None:
    if jax.process_index() != 0:
        return
    path = epath.Path(workdir) / RESULTS_FILE
    history = json.loads(path.read_text()) if path.exists() else {}
    history.setdefault(str(step), {})[name] = result
    run_meta.write_json_atomic(path, history)


def run_evals(setup, params, step: int, writer, workdir: str, *, final: bool):
    """Runs the evaluators due at `step`. Returns ({name: metrics}, {name: error message})."""
    due = {
        n: e
        for n, e in setup.evaluators.items()
        if final or (e.every_steps and step % e.every_steps == 0)
    }
    results, errors = {}, {}
    if not due:
        return results, errors
    with (
        jax.set_mesh(setup.mesh),
        nn.logical_axis_rules(setup.rules),
        host_rows.placement(sharding.batch_sharding(setup.mesh)),
    ):
        predict = {m: _on_devices(f, params, setup.mesh) for m, f in setup.predict_fns.items()}
        for name, evaluator in due.items():
            t0 = time.time()
            try:
                out = evaluator.run({m: predict[m] for m in evaluator.methods})
            except Exception as e:  # noqa: BLE001 - isolate evaluators; re-raised at the end
                logging.exception("eval %s @%d failed", name, step)
                errors[name] = f"{type(e).__name__}: {e}"
                _write_outputs(errors, name, step, workdir, {"error": errors[name]})
                continue
            results[name] = out
            logging.info("eval %s @%d (%.1fs): %s", name, step, time.time() - t0, out)
            _write_outputs(errors, name, step, workdir, out, writer, evaluator)
    return results, errors


def _write_outputs(errors, name, step, workdir, result, writer=None, evaluator=None) -> None:
    """Writes one evaluator's result (summaries, eval_results.json, artifacts such as
    captioning's contact sheet). A failed write (disk full, permissions) is logged and
    recorded in `errors` instead of stopping the run: training and checkpointing go on, and
    the trainer reports it when it ends."""
    try:
        if writer is not None:
            writer.write_scalars(step, {f"{name}/{k}": v for k, v in result.items()})
        _record(workdir, step, name, result)
        if jax.process_index() == 0 and hasattr(evaluator, "write_artifacts"):
            for path in evaluator.write_artifacts(workdir, name=name, step=step):
                logging.info("eval %s @%d wrote %s", name, step, path)
    except OSError as e:
        logging.exception("eval %s @%d: its results could not be written", name, step)
        note = f"results not written ({type(e).__name__}: {e}); the metrics are in the log"
        errors[name] = f"{errors[name]}; {note}" if name in errors else note
