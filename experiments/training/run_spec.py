"""The one pass over a run config: every check that needs no data, no model and no device.

`check(config, num_devices)` reads the whole config once and returns a `RunSpec`: the
validated, resolved values the trainer builds from (the setup reads nothing else). Every
mistake a config can hold by itself fails here, naming the field and what to do, before any
dataset is opened or anything compiles: unknown keys at every level the trainer owns (the
top level, `checkpoint`, `init`, `data`, `optim` and each tower of `model`), a missing
required field, an unknown objective, precision or parallelism preset, a mesh that does not
fit the device count, batch sizes that do not split over it, a micro-batch count that cannot
work, and a learning-rate schedule that contradicts the run's length.

One source of truth for the run's length: the schedule spans `config.total_steps`.
`config.optim.total_steps` is filled from it; set explicitly to another value, it is refused
(a `--config.total_steps=N` override must not leave the schedule at the file's length).
Checks that need what only building gives (the tokenizer's vocabulary, the parameter tree,
the checkpoint in the workdir) follow in `setup`, still before anything compiles.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import ml_collections

import objectives
from experiments.training import accumulation, config_utils, inputs, model_config, sharding
from experiments.training import optimizer as optimizer_lib
from experiments.training.config_utils import ConfigError
from models import precision as precision_lib

# Top-level config schema: name -> None (free-form value) or the allowed sub-keys.
CONFIG_SCHEMA = {
    "objective": None,
    "model": None,  # kwargs of the objective class: model_config.check_model_keys
    "seed": None,
    "total_steps": None,
    "batch_size": None,
    "log_every_steps": None,
    "mesh": None,
    "mesh_dcn": None,
    "sharding_rules": None,  # explicit rules; empty: the preset `parallelism` names
    "parallelism": None,  # "dp" | "fsdp" | "fsdp_tp" (default): sharding.PRESETS
    "sharding_strict": None,
    "optim": None,  # optimizer.check_config
    "init": {"checkpoint", "step", "load", "hf"},
    "checkpoint": {"every_steps", "keep", "async_save", "allow_resume_changes"},
    "data": None,  # inputs.check_data_config
    "evals": None,  # validated by each evaluator when it is built
    "peak_flops_per_device": None,
    "microbatches": None,  # gradient accumulation (training/accumulation.py); default 1
    "precision": None,  # "fp32" (default) | "bf16_mixed" | "bf16_act": models/precision.py
}
REQUIRED = ("objective", "model", "total_steps", "batch_size", "optim", "data")
DEFAULT_MESH = (("data", -1),)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    every_steps: int = 1000
    keep: int = 3
    async_save: bool = True
    allow_resume_changes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class InitSpec:
    """`config.init`: towers (`load`) taken from a vlax checkpoint or a transformers dir."""

    load: tuple[str, ...]
    checkpoint: str | None = None
    step: int | None = None
    hf: str | None = None


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A checked run config; `config` is the resolved whole (what the workdir records)."""

    config: ml_collections.ConfigDict
    objective: str
    objective_cls: type
    model: dict[str, Any]
    data: Any  # the config.data group (bound by inputs.Inputs)
    evals: Mapping[str, Any]
    optim: dict[str, Any]  # total_steps filled in
    total_steps: int
    batch_size: int
    seed: int
    log_every_steps: int
    precision: str
    microbatches: int
    peak_flops_per_device: float | None
    mesh: tuple[tuple[str, int], ...]
    mesh_dcn: tuple[tuple[str, int], ...]
    mesh_sizes: dict[str, int]  # the mesh these give on the devices checked against
    rules: tuple
    sharding_strict: bool
    checkpoint: CheckpointSpec
    init: InitSpec | None


def _int(config, key: str, default: int | None = None, minimum: int = 1) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"config.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _resolved_optim(config) -> dict[str, Any]:
    """config.optim with `total_steps` from config.total_steps (refusing another value)."""
    optim = config_utils.plain(config.optim)
    if not isinstance(optim, dict):
        raise ConfigError(f"config.optim must be a group of fields, got {optim!r}")
    given = optim.get("total_steps")
    if given is not None and given != config.total_steps:
        raise ConfigError(
            f"config.optim.total_steps={given!r} contradicts config.total_steps="
            f"{config.total_steps}: the learning-rate schedule spans the run. Drop "
            "optim.total_steps (it follows total_steps) and set the run's length with "
            "config.total_steps alone."
        )
    optim["total_steps"] = config.total_steps
    optimizer_lib.check_config(optim)
    return optim


def _checkpoint(config) -> CheckpointSpec:
    ck = config_utils.plain(config.get("checkpoint") or {})
    spec = CheckpointSpec(
        every_steps=int(ck.get("every_steps", CheckpointSpec.every_steps)),
        keep=int(ck.get("keep", CheckpointSpec.keep)),
        async_save=bool(ck.get("async_save", CheckpointSpec.async_save)),
        allow_resume_changes=tuple(ck.get("allow_resume_changes") or ()),
    )
    if spec.every_steps < 1 or spec.keep < 1:
        raise ConfigError(
            f"config.checkpoint.every_steps and .keep must be >= 1, got {spec.every_steps} "
            f"and {spec.keep}"
        )
    return spec


def _init(config) -> InitSpec | None:
    init = config_utils.plain(config.get("init") or {})
    if not (init.get("checkpoint") or init.get("hf")):
        if init.get("load"):
            raise ConfigError(
                "config.init.load names towers but neither config.init.checkpoint nor "
                "config.init.hf says where they come from."
            )
        return None
    if init.get("checkpoint") and init.get("hf"):
        raise ConfigError("config.init takes `checkpoint` or `hf`, not both")
    load = init.get("load") or ()
    load = (load,) if isinstance(load, str) else tuple(load)
    if not load:
        raise ConfigError(
            "config.init.load must name the towers to load (e.g. ('img',)); it is empty."
        )
    return InitSpec(load, init.get("checkpoint") or None, init.get("step"), init.get("hf") or None)


def _mesh(config, num_devices: int) -> tuple[tuple, tuple, dict[str, int]]:
    mesh = tuple((str(n), int(s)) for n, s in (config.get("mesh") or DEFAULT_MESH))
    dcn = tuple((str(n), int(s)) for n, s in (config.get("mesh_dcn") or ()))
    slices = math.prod(s for _, s in dcn) if dcn else 1
    if slices < 1 or num_devices % slices:
        raise sharding.ShardingError(
            f"config.mesh_dcn {dcn} does not divide the {num_devices} devices."
        )
    sizes = sharding.mesh_shape(mesh, num_devices // slices)
    for name, size in dcn:
        if name not in sharding.MESH_AXES:
            raise sharding.ShardingError(
                f"config.mesh_dcn axes must be names from {sharding.MESH_AXES}; got {name!r}."
            )
        sizes[name] = sizes.get(name, 1) * size
    return mesh, dcn, {a: sizes.get(a, 1) for a in sharding.MESH_AXES}


def _check_batch_sizes(config, sizes: Mapping[str, int], num_processes: int) -> None:
    sharding.check_batch_size(config.batch_size, sizes, num_processes)
    for name, evaluator in (config.get("evals") or {}).items():
        if hasattr(evaluator, "get") and evaluator.get("batch_size") is not None:
            sharding.check_batch_size(
                int(evaluator["batch_size"]),
                sizes,
                num_processes,
                f"config.evals.{name}.batch_size",
            )


def check(config, *, num_devices: int, num_processes: int = 1) -> RunSpec:
    """Checks `config` for `num_devices` devices over `num_processes` processes; returns
    the resolved RunSpec. Raises ConfigError or sharding.ShardingError naming the field."""
    config_utils.check_keys(config, CONFIG_SCHEMA, "config")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ConfigError(f"config.{missing[0]} is required (missing: {missing}).")
    total_steps = _int(config, "total_steps")
    batch_size = _int(config, "batch_size")
    try:
        objective_cls = objectives.get_objective(config.objective)
    except ValueError as e:
        raise ConfigError(f"config.objective: {e}") from None
    model = config_utils.plain(config.model)
    model_config.check_model_keys(objective_cls, model)
    precision = config.get("precision") or "fp32"
    if precision not in precision_lib.POLICIES:
        raise ConfigError(
            f"config.precision={precision!r} is unknown: use one of "
            f"{sorted(precision_lib.POLICIES)}."
        )
    inputs.check_data_config(config.data)
    optim = _resolved_optim(config)
    mesh, dcn, sizes = _mesh(config, num_devices)
    rules = sharding.config_rules(config.get("sharding_rules"), config.get("parallelism"), sizes)
    _check_batch_sizes(config, sizes, num_processes)
    microbatches = config.get("microbatches", 1)
    try:
        accumulation.check(objective_cls, microbatches, batch_size, sizes["data"] * sizes["fsdp"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    resolved = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else config)
    resolved.optim = optim
    peak = config.get("peak_flops_per_device")
    return RunSpec(
        config=resolved,
        objective=config.objective,
        objective_cls=objective_cls,
        model=model,
        data=config.data,
        evals=config.get("evals") or {},
        optim=optim,
        total_steps=total_steps,
        batch_size=batch_size,
        seed=int(config.get("seed", 0)),
        log_every_steps=_int(config, "log_every_steps", 50),
        precision=precision,
        microbatches=microbatches,
        peak_flops_per_device=float(peak) if peak else None,
        mesh=mesh,
        mesh_dcn=dcn,
        mesh_sizes=sizes,
        rules=rules,
        sharding_strict=bool(config.get("sharding_strict", False)),
        checkpoint=_checkpoint(config),
        init=_init(config),
    )
