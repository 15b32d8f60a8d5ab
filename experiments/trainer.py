"""The one generic trainer: every objective, every mesh, one code path.

    state = {"step", "params", "opt_state"}   (the RNG is derived from config.seed and step)

1. Validate the config and build mesh, inputs, objective, evaluators (all errors here,
   before anything compiles).
2. `jax.eval_shape` the init to get logical partition specs, then materialise the
   params directly sharded with `jax.jit(init, out_shardings=...)`.
3. Resume from the workdir's latest checkpoint (state + input pipeline position), or
   start fresh (optionally loading towers from another run's checkpoint: LiT).
4. One jitted step with in/out shardings and donated state; loss and grad norm are
   checked for NaN/Inf one step behind (synchronously before any checkpoint), so a
   bad step stops training with the last good checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metric_writers, periodic_actions
from etils import epath
from jax.experimental import multihost_utils

import objectives
from experiments import checkpointing, config_utils, flops, inputs, sharding
from experiments import optimizer as optimizer_lib
from experiments.evaluators import build_evaluators

# Top-level config schema: name -> None (free-form value) or the allowed sub-keys.
CONFIG_SCHEMA = {
    "objective": None,
    "model": None,  # kwargs of the objective class; the class validates them
    "seed": None,
    "total_steps": None,
    "batch_size": None,
    "log_every_steps": None,
    "mesh": None,
    "mesh_dcn": None,
    "sharding_rules": None,
    "optim": None,  # validated by experiments.optimizer
    "init": {"checkpoint", "step", "load"},
    "checkpoint": {"every_steps", "keep", "async_save"},
    "data": None,  # validated by experiments.inputs
    "evals": None,  # validated by each evaluator
    "peak_flops_per_device": None,
}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient."""


@dataclasses.dataclass
class Setup:
    """Everything `train` builds before the loop; also used by the benchmark."""

    mesh: jax.sharding.Mesh
    rules: tuple
    model: nn.Module
    inputs: inputs.Inputs
    state: dict
    step_fn: Callable
    flops_per_step: float
    evaluators: dict

    @functools.cached_property
    def embed_fns(self) -> tuple[Callable, Callable]:
        """Jitted (params, batch) -> embeddings, built once so evals never recompile."""
        model = self.model
        return tuple(
            jax.jit(lambda p, x, m=method: model.apply({"params": p}, x, method=m))
            for method in ("embed_image", "embed_text")
        )


def validate_config(config) -> None:
    config_utils.check_keys(config, CONFIG_SCHEMA, "config")
    for key in ("objective", "model", "total_steps", "batch_size", "optim", "data"):
        if key not in config:
            raise config_utils.ConfigError(f"config.{key} is required.")
    if config.total_steps < 1:
        raise config_utils.ConfigError(f"config.total_steps must be >= 1, got {config.total_steps}")


def _unboxed_init(model, dummy_batch, rng):
    variables = model.init({"params": rng, "dropout": rng}, dummy_batch, train=False)
    return variables["params"]


def init_params(model, dummy_batch, mesh, rules, seed: int):
    """Sharded initialisation: eval_shape for specs, then one jit with out_shardings."""
    rng = jax.random.PRNGKey(seed)
    abstract = jax.eval_shape(lambda r: _unboxed_init(model, dummy_batch, r), rng)
    shardings = sharding.logical_shardings(abstract, mesh, rules)
    params = jax.jit(
        lambda r: nn.unbox(_unboxed_init(model, dummy_batch, r)), out_shardings=shardings
    )(rng)
    return params, shardings


def load_init_towers(params, init_config, shardings):
    """LiT-style init: copies `init.load` subtrees (e.g. ("img",)) from another run."""
    loaded, step = checkpointing.load_params(init_config.checkpoint, init_config.get("step"))
    params = dict(params)
    for name in init_config.load:
        if name not in loaded or name not in params:
            raise config_utils.ConfigError(
                f"config.init.load names {name!r}, but the checkpoint has {sorted(loaded)} "
                f"and the model has {sorted(params)}."
            )
        want = checkpointing.param_signature(params[name])
        have = checkpointing.param_signature(loaded[name])
        if want != have:
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            raise checkpointing.CheckpointMismatchError(
                f"config.init.checkpoint={init_config.checkpoint} (step {step}): tower {name!r} "
                f"does not match this model's, e.g. {diff[:3]}."
            )
        params[name] = jax.device_put(loaded[name], shardings[name])
    logging.info(
        "Loaded %s from %s (step %d).", list(init_config.load), init_config.checkpoint, step
    )
    return params


def make_train_step(model, tx, schedule, freeze: tuple[str, ...], seed: int):
    """(state, batch) -> (state, metrics); pure, for jax.jit with donation."""
    base_rng = jax.random.PRNGKey(seed)

    def train_step(state, batch):
        rng = jax.random.fold_in(base_rng, state["step"])

        def loss_fn(params):
            return model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optimizer_lib.trainable_global_norm(grads, freeze),
            "param_norm": optax.global_norm(params),
            "learning_rate": schedule(state["step"]),
        }
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step


def setup(config, *, need_data: bool = True, devices=None, load_init: bool = True) -> Setup:
    """Validates the config and builds mesh, inputs, model, sharded state and the step.

    `devices` restricts the mesh to a subset (tests compare meshes in one process).
    """
    validate_config(config)
    mesh = sharding.make_mesh(config.mesh, config.get("mesh_dcn") or (), devices)
    sharding.check_batch_size(config.batch_size, mesh)
    rules = tuple(tuple(r) for r in (config.get("sharding_rules") or sharding.DEFAULT_RULES))
    data = inputs.Inputs(
        config.data, global_batch_size=config.batch_size, seed=config.seed, build_train=need_data
    )
    evaluators = {}
    if need_data:  # evaluator configs and their data are checked before anything compiles
        evaluators = build_evaluators(config.get("evals"), make_data=data.make_eval_data)
        for name in evaluators:
            sharding.check_batch_size(
                config.evals[name].batch_size, mesh, f"config.evals.{name}.batch_size"
            )
    model_config = inputs.complete_model_config(config.model, data)
    model = objectives.get_objective(config.objective)(**model_config)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        dummy = data.dummy_batch(config.batch_size)
        params, param_shardings = init_params(model, dummy, mesh, rules, config.seed)
        if load_init and config.get("init") and config.init.get("checkpoint"):
            params = load_init_towers(params, config.init, param_shardings)
        tx, schedule = optimizer_lib.make_optimizer(config.optim, params)
        freeze = optimizer_lib.freeze_patterns(config.optim)
        frozen = optimizer_lib.frozen_mask(params, freeze)
        opt_state = jax.jit(tx.init)(params)
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state}
        state_shardings = jax.tree.map(lambda x: x.sharding, state)
        step_fn = jax.jit(
            make_train_step(model, tx, schedule, freeze, config.seed),
            in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
            out_shardings=(state_shardings, sharding.replicated(mesh)),
            donate_argnums=(0,),
        )
    flops_per_step = config.batch_size * model.train_flops_per_example(
        data.example_shapes(), frozen=_frozen_towers(frozen)
    )
    return Setup(mesh, rules, model, data, state, step_fn, flops_per_step, evaluators)


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


def _write_json_atomic(path: epath.Path, obj) -> None:
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)  # atomic, and overwrites (rename refuses to)


def run_evals(s: Setup, evaluators, params, step: int, writer, workdir, *, final: bool):
    """Runs the evaluators due at `step`; writes scalars and <workdir>/eval_results.json."""
    due = {
        n: e
        for n, e in evaluators.items()
        if final or (e.every_steps and step % e.every_steps == 0)
    }
    if not due:
        return {}
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        embed_image, embed_text = s.embed_fns
        batch_sharding = sharding.batch_sharding(s.mesh)

        def on_devices(fn):
            # Every process reads the same eval rows: place each device's slice of them,
            # then gather the embeddings back to every host.
            def run(x):
                x = np.asarray(x)
                out = fn(
                    params,
                    jax.make_array_from_callback(x.shape, batch_sharding, lambda idx: x[idx]),
                )
                return np.asarray(multihost_utils.process_allgather(out, tiled=True))

            return run

        results = {}
        for name, evaluator in due.items():
            t0 = time.time()
            results[name] = evaluator.run(on_devices(embed_image), on_devices(embed_text))
            logging.info("eval %s @%d (%.1fs): %s", name, step, time.time() - t0, results[name])
            writer.write_scalars(step, {f"{name}/{k}": v for k, v in results[name].items()})
    if jax.process_index() == 0:
        path = epath.Path(workdir) / "eval_results.json"
        history = json.loads(path.read_text()) if path.exists() else {}
        history[str(step)] = results
        _write_json_atomic(path, history)
    return results


def train(config, workdir: str, *, on_batch: Callable | None = None) -> dict[str, Any]:
    """Trains (or resumes) `config` in `workdir`.

    Returns {"results": final eval metrics, "state": final train state, "setup": Setup}.
    `on_batch(step, local_batch)` sees every host batch before it is used (tests, debugging).
    """
    workdir = checkpointing.resolve(workdir)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    # A resumed run takes every parameter from its own checkpoint: skip LiT's tower load.
    resuming = checkpointing.latest_step(workdir) is not None
    s = setup(config, load_init=not resuming)
    evaluators = s.evaluators
    ck_cfg = config.get("checkpoint") or {}
    ckpt = checkpointing.Checkpointer(
        workdir,
        save_every=ck_cfg.get("every_steps", 1000),
        keep=ck_cfg.get("keep", 3),
        async_save=ck_cfg.get("async_save", True),
    )
    meta = checkpointing.make_meta(config.objective, s.state["params"])
    train_iter = s.inputs.train_iterator()
    state = s.state
    start = ckpt.latest_step()
    if start is not None:
        checkpointing.check_compatible(ckpt.read_meta(start), meta, f"--workdir {workdir}")
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        state, data_state = ckpt.restore(start, abstract)
        s.state = None  # drop the fresh init so its buffers are freed
        train_iter.set_state(inputs.iterator_state_from_json(data_state))
        logging.info("Resumed from step %d in %s.", start, ckpt.directory)
    start = start or 0

    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False
    )
    progress = periodic_actions.ReportProgress(
        num_train_steps=config.total_steps,
        writer=writer,
        every_steps=config.get("log_every_steps", 50),
    )
    peak = flops.peak_flops_per_device(config.get("peak_flops_per_device"))
    logging.info("Peak FLOP/s per device for MFU: %s", peak)
    log_every = config.get("log_every_steps", 50)
    total = config.total_steps
    pending = None  # (step, metrics) not yet checked for NaN
    t_log, step_at_log = None, start  # throughput = steps since the last log / wall time
    results = {}
    try:
        with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
            for step in range(start + 1, total + 1):
                local = next(train_iter)
                if on_batch is not None:
                    on_batch(step, local)
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
                    e.every_steps and step % e.every_steps == 0 for e in evaluators.values()
                )
                if step % log_every == 0 or save_due or eval_due or step == start + 1:
                    host = _check_finite(*pending, ckpt, workdir)
                    pending = None
                    now = time.time()
                    if t_log is not None and step > step_at_log:
                        dt = (now - t_log) / (step - step_at_log)
                        host["step_time_s"] = dt
                        host["examples_per_sec"] = config.batch_size / dt
                        per_dev = s.flops_per_step / dt / jax.device_count()
                        host["tflops_per_device"] = per_dev / 1e12
                        if peak:
                            host["mfu"] = per_dev / peak
                    writer.write_scalars(step, host)
                    t_log, step_at_log = now, step
                if save_due:
                    ckpt.save(
                        step, state, inputs.iterator_state_to_json(train_iter.get_state()), meta
                    )
                if eval_due or step == total:
                    results = run_evals(
                        s, evaluators, state["params"], step, writer, workdir, final=step == total
                    )
                    t_log = time.time()  # keep eval time out of throughput
            if pending is not None:
                _check_finite(*pending, ckpt, workdir)
        if start >= total:
            results = run_evals(s, evaluators, state["params"], total, writer, workdir, final=True)
    finally:
        # Also on errors: an async save still in flight must finish, or it is lost.
        ckpt.close()
        writer.flush()

    return {"results": results, "state": state, "setup": s}
