"""Everything a run builds before its first step, in one pass: check, then build.

1. `run_spec.check` reads the whole config once and refuses every mistake it can hold by
   itself (keys, names, lengths, the mesh against the device count, batch sizes).
2. Then, in dependency order and reading only the checked spec: the mesh; the data (the
   sources opened, the tokenizer loaded or trained, the tasks checked against the fields);
   the evaluators (their configs and data checked); the objective (its config completed
   from the tokenizer and the precision policy) and the methods the evaluators need; the
   abstract sharded parameters, the optimizer (freeze regexes checked against the tree);
   the run metadata and, with a workdir holding a checkpoint, the resume check; the
   state builder (towers of config.init checked against their source); the jitted step.

Nothing but the optimizer's tiny init compiles here; every error above is raised first.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

import flax.linen as nn
import jax

from experiments.evaluators import build_evaluators
from experiments.training import (
    checkpointing,
    eval_runner,
    inputs,
    model_config,
    run_meta,
    run_spec,
    sharding,
    train_state,
    train_step,
)
from experiments.training import optimizer as optimizer_lib


@dataclasses.dataclass
class Setup:
    """Everything `train` builds before the loop; also used by evaluate, the benchmark, tests."""

    spec: run_spec.RunSpec
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

    @property
    def seed(self) -> int:
        return self.spec.seed

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
        return self.states.fresh(self.spec.seed)


def setup(config, *, workdir: str | None = None, need_data: bool = True, devices=None) -> Setup:
    """Checks `config`, then builds mesh, inputs, evaluators, model, abstract state and step.

    With `workdir` holding a checkpoint, the resume is checked here (model, meaningful config
    fields, tokenizer) and `resume_step` is set; nothing is restored yet. `need_data=False`
    builds from shapes only (no dataset read, no evaluators: the benchmark). `devices`
    restricts the mesh to a subset (tests compare meshes in one process).
    """
    devices = list(jax.devices() if devices is None else devices)
    spec = run_spec.check(config, num_devices=len(devices), num_processes=jax.process_count())
    mesh = sharding.make_mesh(spec.mesh, spec.mesh_dcn, devices)
    data = inputs.Inputs(
        spec.data,
        global_batch_size=spec.batch_size,
        seed=spec.seed,
        build_train=need_data,
        inherited_tokenizer=_inherited_tokenizer(spec.init),
    )
    evaluators = {}
    if need_data:  # evaluator configs and their data are checked before anything compiles
        evaluators = build_evaluators(spec.evals, make_data=data.make_eval_data)
    model_kwargs = model_config.complete(
        spec.objective_cls, spec.model, data.model_fields(), spec.precision
    )
    model = spec.objective_cls(**model_kwargs)
    eval_runner.check_methods(model, evaluators)

    with jax.set_mesh(mesh), nn.logical_axis_rules(spec.rules):
        dummy = data.dummy_batch(spec.batch_size)
        boxed = train_state.boxed_abstract_params(model, dummy)
        params = train_state.with_mesh_shardings(
            boxed, mesh, spec.rules, strict=spec.sharding_strict
        )
        tx, schedule = optimizer_lib.make_optimizer(spec.optim, params)
        freeze = optimizer_lib.freeze_patterns(spec.optim)
        meta = run_meta.make_meta(
            spec.config,
            model_config=model_kwargs,
            params=params,
            tokenizer=data.tokenizer_identity(),
            data=data.description(),
        )
        resume_step = _check_resume(spec, workdir, meta) if workdir else None
        # A resumed run restores its own weights; config.init only seeds a fresh one.
        init = spec.init if resume_step is None else None
        states = train_state.StateBuilder(
            model, dummy, boxed, params, tx, mesh, spec.rules, init_spec=init
        )
        step_fn = jax.jit(
            train_step.make_train_step(
                model, tx, schedule, freeze, spec.seed, spec.microbatches, params
            ),
            in_shardings=(states.shardings, sharding.batch_sharding(mesh)),
            out_shardings=(states.shardings, sharding.replicated(mesh)),
            donate_argnums=(0,),
        )
    frozen = optimizer_lib.frozen_mask(params, freeze)
    _log_parameters(params, freeze)
    per_example = model.train_flops_per_example(
        data.example_shapes(), frozen=_frozen_towers(frozen)
    )
    return Setup(
        spec=spec,
        mesh=mesh,
        rules=spec.rules,
        model=model,
        inputs=data,
        states=states,
        step_fn=step_fn,
        flops_by_dtype={k: spec.batch_size * v for k, v in per_example.items()},
        evaluators=evaluators,
        meta=meta,
        resume_step=resume_step,
    )


def _inherited_tokenizer(init: run_spec.InitSpec | None) -> dict | None:
    """A fine-tune (config.init.checkpoint) reads the ids its weights were trained on."""
    if init is None or not init.checkpoint:
        return None
    return checkpointing.read_meta(init.checkpoint, init.step)[0].get("tokenizer")


def _check_resume(spec: run_spec.RunSpec, workdir: str, meta: dict) -> int | None:
    """The checkpoint step to resume from (None: fresh), after checking it is this run's."""
    step = checkpointing.latest_step(workdir)
    if step is None:
        return None
    saved, step = checkpointing.read_meta(workdir, step)
    allow = spec.checkpoint.allow_resume_changes
    changes = run_meta.check_resume(saved, meta, f"--workdir {workdir}", allow=allow)
    for field, (old, new) in changes.items():
        logging.info("Resuming with a changed config field %s: %r -> %r", field, old, new)
    return step


def _frozen_towers(frozen) -> set[str]:
    """Top-level param groups whose every leaf is frozen (e.g. {"img"} for LiT)."""
    return {k for k, v in frozen.items() if isinstance(v, dict) and all(jax.tree.leaves(v))}


def _log_parameters(params, freeze) -> None:
    total, trainable = optimizer_lib.parameter_counts(params, freeze)
    by_group = {k: optimizer_lib.parameter_counts(v)[0] for k, v in params.items()}
    logging.info(
        "Parameters: %s (%s trainable, %s frozen); by group: %s",
        f"{total:,}",
        f"{trainable:,}",
        f"{total - trainable:,}",
        ", ".join(f"{k} {v:,}" for k, v in by_group.items()),
    )
