"""The one generic trainer: every objective, every mesh, one code path.

    state = {"step", "params", "opt_state"}   (the RNG is derived from config.seed and step)

1. Validate the config and build mesh, inputs, objective and evaluators; check a resumed
   workdir's checkpoint (model, config, tokenizer) and LiT towers against their checkpoint
   metadata. Every error is raised here, before anything but the optimizer's tiny init
   compiles.
2. `jax.eval_shape` the init for shapes and logical partition specs. A fresh run
   materialises the params directly sharded (`jax.jit(init, out_shardings=...)`); a resumed
   run restores straight into the abstract state (no throw-away init).
3. One jitted step with in/out shardings and donated state; loss and grad norm are
   checked for NaN/Inf one step behind (synchronously before any checkpoint), so a
   bad step stops training with the last good checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from clu import metric_writers, periodic_actions
from etils import epath

import objectives
from experiments.evaluators import build_evaluators
from experiments.training import (
    accumulation,
    checkpointing,
    config_utils,
    eval_runner,
    flops,
    global_norm,
    inputs,
    run_meta,
    sharding,
    train_state,
)
from experiments.training import optimizer as optimizer_lib

# Top-level config schema: name -> None (free-form value) or the allowed sub-keys.
CONFIG_SCHEMA = {
    "objective": None,
    "model": None,  # kwargs of the objective class; checked by inputs.complete_model_config
    "seed": None,
    "total_steps": None,
    "batch_size": None,
    "log_every_steps": None,
    "mesh": None,
    "mesh_dcn": None,
    "sharding_rules": None,  # explicit rules; empty: the preset `parallelism` names
    "parallelism": None,  # "dp" | "fsdp" | "fsdp_tp" (default): sharding.PRESETS
    "sharding_strict": None,
    "optim": None,  # validated by experiments.training.optimizer
    "init": {"checkpoint", "step", "load", "hf"},
    "checkpoint": {"every_steps", "keep", "async_save", "allow_resume_changes"},
    "data": None,  # validated by experiments.training.inputs
    "evals": None,  # validated by each evaluator
    "peak_flops_per_device": None,
    "microbatches": None,  # gradient accumulation (experiments/training/accumulation.py); default 1
    "precision": None,  # "fp32" (default) | "bf16_mixed" | "bf16_act": models/precision.py
}


def _log_host_share(index, global_batch: int) -> None:
    """Which examples this process read for its first batch (each host reads its own share)."""
    index = np.asarray(index).reshape(-1)
    logging.info(
        "Data: process %d/%d read %d of the global batch's %d examples; source indices %s",
        jax.process_index(), jax.process_count(), index.size, global_batch, index.tolist(),
    )  # fmt: skip


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient."""


@dataclasses.dataclass
class Setup:
    """Everything `train` builds before the loop; also used by the benchmark and tests."""

    mesh: jax.sharding.Mesh
    rules: tuple
    model: nn.Module
    inputs: inputs.Inputs
    states: train_state.StateBuilder
    step_fn: Callable
    flops_by_dtype: dict[str, float]  # analytic train FLOPs per step, by matmul input dtype
    evaluators: dict
    meta: dict
    resume_step: int | None  # the workdir's checkpoint step to restore, or None: fresh
    seed: int

    @property
    def flops_per_step(self) -> float:
        return sum(self.flops_by_dtype.values())

    @functools.cached_property
    def predict_fns(self) -> dict[str, Callable]:
        """The jitted inference methods the evaluators name (each once)."""
        methods = sorted({m for e in self.evaluators.values() for m in e.methods})
        return eval_runner.make_predict_fns(self.model, methods)

    def fresh_state(self) -> dict:
        """A newly initialised, sharded train state (what a fresh run starts from)."""
        return self.states.fresh(self.seed)


def validate_config(config) -> None:
    config_utils.check_keys(config, CONFIG_SCHEMA, "config")
    for key in ("objective", "model", "total_steps", "batch_size", "optim", "data"):
        if key not in config:
            raise config_utils.ConfigError(f"config.{key} is required.")
    if config.total_steps < 1:
        raise config_utils.ConfigError(f"config.total_steps must be >= 1, got {config.total_steps}")


def make_train_step(
    model,
    tx,
    schedule,
    freeze: tuple[str, ...],
    seed: int,
    microbatches: int = 1,
    layout: Any = None,
):
    """(state, batch) -> (state, metrics); pure, for jax.jit with donation.

    microbatches > 1: the gradient of the whole batch, accumulated exactly over that many
    micro-batches (`experiments.training.accumulation`). `layout`: the abstract params with their
    shardings, which groups the norms' reductions (`experiments.training.global_norm`)."""
    base_rng = jax.random.key(seed)

    def train_step(state, batch):
        rng = jax.random.fold_in(base_rng, state["step"])

        def loss_fn(params):
            return model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})

        if microbatches > 1:
            (loss, metrics), grads = accumulation.loss_and_grads(
                model, state["params"], batch, microbatches, rng
            )
        else:
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optimizer_lib.trainable_global_norm(grads, freeze, layout),
            "param_norm": global_norm.global_norm(params, layout),
            "learning_rate": schedule(state["step"]),
        }
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step


def setup(config, *, workdir: str | None = None, need_data: bool = True, devices=None) -> Setup:
    """Validates the config and builds mesh, inputs, model, abstract state and the step.

    With `workdir` holding a checkpoint, the resume is checked here (model, meaningful config
    fields, tokenizer) and `resume_step` is set; nothing is restored yet. `devices` restricts
    the mesh to a subset (tests compare meshes in one process).
    """
    validate_config(config)
    mesh = sharding.make_mesh(config.mesh, config.get("mesh_dcn") or (), devices)
    sharding.check_batch_size(config.batch_size, mesh)
    rules = sharding.config_rules(config, mesh)
    init = config.get("init") or {}
    inherited = None
    if init.get("checkpoint"):  # a fine-tune reads the ids its weights were trained on
        inherited = checkpointing.read_meta(init["checkpoint"], init.get("step"))[0].get(
            "tokenizer"
        )
    data = inputs.Inputs(
        config.data,
        global_batch_size=config.batch_size,
        seed=config.seed,
        build_train=need_data,
        inherited_tokenizer=inherited,
    )
    evaluators = {}
    if need_data:  # evaluator configs and their data are checked before anything compiles
        evaluators = build_evaluators(config.get("evals"), make_data=data.make_eval_data)
        for name in evaluators:
            sharding.check_batch_size(
                config.evals[name].batch_size, mesh, f"config.evals.{name}.batch_size"
            )
    objective_cls = objectives.get_objective(config.objective)
    model_config = inputs.complete_model_config(
        objective_cls, config.model, data, config.get("precision", "fp32")
    )
    model = objective_cls(**model_config)
    eval_runner.check_methods(model, evaluators)
    microbatches = config.get("microbatches", 1)
    try:
        accumulation.check(
            model, microbatches, config.batch_size, sharding.data_parallel_size(mesh)
        )
    except ValueError as e:
        raise config_utils.ConfigError(str(e)) from None

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        dummy = data.dummy_batch(config.batch_size)
        boxed = train_state.boxed_abstract_params(model, dummy)
        params = train_state.with_mesh_shardings(
            boxed, mesh, rules, strict=bool(config.get("sharding_strict", False))
        )
        tx, schedule = optimizer_lib.make_optimizer(config.optim, params)
        freeze = optimizer_lib.freeze_patterns(config.optim)
        meta = run_meta.make_meta(
            config,
            model_config=model_config,
            params=params,
            tokenizer=data.tokenizer_identity(),
            data=data.description(),
        )
        resume_step = _check_resume(config, workdir, meta) if workdir else None
        init = config.get("init")
        load_init = bool(init and (init.get("checkpoint") or init.get("hf")))
        load_init = load_init and resume_step is None
        states = train_state.StateBuilder(
            model, dummy, boxed, params, tx, mesh, rules, init_config=init if load_init else None
        )
        step_fn = jax.jit(
            make_train_step(model, tx, schedule, freeze, config.seed, microbatches, params),
            in_shardings=(states.shardings, sharding.batch_sharding(mesh)),
            out_shardings=(states.shardings, sharding.replicated(mesh)),
            donate_argnums=(0,),
        )
    frozen = optimizer_lib.frozen_mask(params, freeze)
    per_example = model.train_flops_per_example(
        data.example_shapes(), frozen=_frozen_towers(frozen)
    )
    flops_by_dtype = {k: config.batch_size * v for k, v in per_example.items()}
    return Setup(
        mesh,
        rules,
        model,
        data,
        states,
        step_fn,
        flops_by_dtype,
        evaluators,
        meta,
        resume_step,
        config.seed,
    )


def _check_resume(config, workdir: str, meta: dict) -> int | None:
    """The checkpoint step to resume from (None: fresh), after checking it is this run's."""
    step = checkpointing.latest_step(workdir)
    if step is None:
        return None
    saved, step = checkpointing.read_meta(workdir, step)
    allow = tuple((config.get("checkpoint") or {}).get("allow_resume_changes") or ())
    changes = run_meta.check_resume(saved, meta, f"--workdir {workdir}", allow=allow)
    for field, (old, new) in changes.items():
        logging.info("Resuming with a changed config field %s: %r -> %r", field, old, new)
    return step


def _frozen_towers(frozen) -> set[str]:
    """Top-level param groups whose every leaf is frozen (e.g. {"img"} for LiT)."""
    return {k for k, v in frozen.items() if isinstance(v, dict) and all(jax.tree.leaves(v))}


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
    run_meta.record_launch(workdir, config, start_step=s.resume_step or 0, command=command)
    ck_cfg = config.get("checkpoint") or {}
    ckpt = checkpointing.Checkpointer(
        workdir,
        save_every=ck_cfg.get("every_steps", 1000),
        keep=ck_cfg.get("keep", 3),
        async_save=ck_cfg.get("async_save", True),
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
    log_every = config.get("log_every_steps", 50)
    progress = periodic_actions.ReportProgress(
        num_train_steps=config.total_steps, writer=writer, every_steps=log_every
    )
    peak = flops.effective_peak(s.flops_by_dtype, config.get("peak_flops_per_device"))
    logging.info("Peak FLOP/s per device for MFU (%s matmuls): %s", sorted(s.flops_by_dtype), peak)
    total = config.total_steps
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
                    _log_host_share(local["index"], config.batch_size)
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
                                s.flops_per_step, dt, config.batch_size, jax.device_count(), peak
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
                results = evaluate(total, state["params"], final=True)
    finally:
        # Also on errors: an async save still in flight must finish, or it is lost.
        ckpt.close()
        writer.flush()
    if errors:
        raise eval_runner.EvaluationError(
            f"Evaluators failed (the others' results are in {workdir}/"
            f"{eval_runner.RESULTS_FILE}; the checkpoint is saved): {errors}"
        )
    return {"results": results, "state": state, "setup": s}
