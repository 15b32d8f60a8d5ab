"""The one generic trainer: every objective, every mesh, one code path.

    state = {"step", "params", "opt_state"}   (the RNG is derived from config.seed and step)

`setup` (training/setup.py) checks the config and builds everything first; every error is
raised there, before anything but the optimizer's tiny init compiles. A fresh run then
materialises the params directly sharded; a resumed run restores straight into the abstract
state. The loop runs one jitted step with in/out shardings and donated state; loss and grad
norm are checked for NaN/Inf one step behind (synchronously before any checkpoint), so a bad
step stops training with the last good checkpoint intact; evaluators run every their
`every_steps` and at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from clu import metric_writers, periodic_actions
from etils import epath

from experiments.training import checkpointing, eval_runner, flops, inputs, run_meta, sharding
from experiments.training.setup import Setup, setup

__all__ = ["NonFiniteLossError", "Setup", "setup", "train"]


def _log_host_share(index, global_batch: int) -> None:
    """Which examples this process read for its first batch (each host reads its own share)."""
    index = np.asarray(index).reshape(-1)
    logging.info(
        "Data: process %d/%d read %d of the global batch's %d examples; source indices %s",
        jax.process_index(), jax.process_count(), index.size, global_batch, index.tolist(),
    )  # fmt: skip


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient."""


def _check_finite(step: int, metrics, ckpt, workdir) -> dict[str, float]:
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = {k: host[k] for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(host[k])}
    if bad:
        ckpt.wait()
        last = ckpt.latest_step()
        raise NonFiniteLossError(
            f"Non-finite {bad} at step {step}. Training stopped; the last good checkpoint is "
            f"{'step ' + str(last) if last is not None else 'none (no checkpoint yet)'} in "
            f"{ckpt.directory}. Lower optim.lr, raise optim.warmup_steps or check the data; "
            f"rerunning with --workdir {workdir} resumes from that checkpoint."
        )
    return host


def train(
    config,
    workdir: str,
    *,
    on_batch: Callable | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) `config` in `workdir`.

    Returns {"results": final eval metrics, "state": final train state, "setup": Setup}.
    `on_batch(step, local_batch)` sees every host batch before it is used (tests, debugging);
    `command` is the launch command line recorded in the workdir (default: sys.argv).
    """
    workdir = checkpointing.resolve(workdir)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    s = setup(config, workdir=workdir)
    spec = s.spec
    run_meta.record_launch(workdir, spec.config, start_step=s.resume_step or 0, command=command)
    ckpt = checkpointing.Checkpointer(
        workdir,
        save_every=spec.checkpoint.every_steps,
        keep=spec.checkpoint.keep,
        async_save=spec.checkpoint.async_save,
    )
    train_iter = s.inputs.train_iterator()
    if s.resume_step is not None:
        state, data_state = ckpt.restore(s.resume_step, s.states.abstract)
        train_iter.set_state(inputs.iterator_state_from_json(data_state))
        logging.info("Resumed from step %d in %s.", s.resume_step, ckpt.directory)
    else:
        state = s.fresh_state()
    start = s.resume_step or 0

    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False
    )
    log_every = spec.log_every_steps
    total = spec.total_steps
    progress = periodic_actions.ReportProgress(
        num_train_steps=total, writer=writer, every_steps=log_every
    )
    peak = flops.effective_peak(s.flops_by_dtype, spec.peak_flops_per_device)
    logging.info("Peak FLOP/s per device for MFU (%s matmuls): %s", sorted(s.flops_by_dtype), peak)
    pending = None  # (step, metrics) not yet checked for NaN
    t_log, step_at_log = None, start  # throughput = steps since the last log / wall time
    results, errors = {}, {}

    def evaluate(step, params, final):
        nonlocal t_log
        out, failed = eval_runner.run_evals(s, params, step, writer, workdir, final=final)
        errors.update({f"{name}@{step}": e for name, e in failed.items()})
        t_log = time.time()  # keep eval time out of throughput
        return out

    try:
        with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
            data_wait = 0.0  # seconds blocked on the input pipeline since the last log
            for step in range(start + 1, total + 1):
                t_data = time.perf_counter()
                local = next(train_iter)
                data_wait += time.perf_counter() - t_data
                if on_batch is not None:
                    on_batch(step, local)
                if step == start + 1 and "index" in local:
                    _log_host_share(local["index"], spec.batch_size)
                # "index" is host-side bookkeeping (data order); the model never sees it.
                batch = sharding.to_global_batch(
                    {k: v for k, v in local.items() if k != "index"}, s.mesh
                )
                state, metrics = s.step_fn(state, batch)
                if pending is not None:
                    _check_finite(*pending, ckpt, workdir)
                pending = (step, metrics)
                progress(step)
                save_due = step % ckpt.every_steps == 0 or step == total
                eval_due = any(
                    e.every_steps and step % e.every_steps == 0 for e in s.evaluators.values()
                )
                if step % log_every == 0 or save_due or eval_due or step == start + 1:
                    host = _check_finite(*pending, ckpt, workdir)
                    pending = None
                    now = time.time()
                    if t_log is not None and step > step_at_log:
                        dt = (now - t_log) / (step - step_at_log)
                        host.update(
                            flops.throughput(
                                s.flops_per_step, dt, spec.batch_size, jax.device_count(), peak
                            )
                        )
                        # Steps are dispatched asynchronously, so waiting for the next batch
                        # overlaps device work: a wait near the step time means the input
                        # pipeline, not the model, sets the pace.
                        wait = data_wait / (step - step_at_log)
                        host.update(data_wait_s=wait, data_wait_fraction=min(wait / dt, 1.0))
                    writer.write_scalars(step, host)
                    t_log, step_at_log, data_wait = now, step, 0.0
                if save_due:
                    ckpt.save(
                        step, state, inputs.iterator_state_to_json(train_iter.get_state()), s.meta
                    )
                if eval_due or step == total:
                    results = evaluate(step, state["params"], final=step == total)
            if pending is not None:
                _check_finite(*pending, ckpt, workdir)
            if start >= total:
                # Nothing left to train: the final evaluation is of the checkpoint's own step,
                # which is past total_steps when a finished run is resumed with a smaller one.
                logging.info(
                    "The checkpoint (step %d) is at or past config.total_steps=%d: no training "
                    "steps; evaluating step %d.", start, total, start,
                )  # fmt: skip
                results = evaluate(start, state["params"], final=True)
    finally:
        # Also on errors: an async save still in flight must finish, or it is lost.
        ckpt.close()
        writer.flush()
    if errors:
        raise eval_runner.EvaluationError(
            f"Evaluation did not complete cleanly: {errors}. Training finished and the "
            f"checkpoint is saved; the results that could be written are in {workdir}/"
            f"{eval_runner.RESULTS_FILE}."
        )
    return {"results": results, "state": state, "setup": s}
