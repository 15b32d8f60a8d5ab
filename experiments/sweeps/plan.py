"""A sweep's points, resolved and checked before anything launches.

`load_plan("path/config.py[:args]")` calls the file's `get_sweep()` (experiments/sweeps/grid.py),
merges each point with the sweep's `fixed` overrides, builds the exact `experiments.train`
command line of every point and parses it with the same config loader the trainer uses:
a field that does not exist, a value of the wrong type, an empty grid or two points sharing a
workdir is a `SweepError` naming the point, before any worker starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from experiments.sweeps import grid as sg
from experiments.training import config_utils


class SweepError(ValueError):
    """The sweep definition or its points are wrong (the message names the point)."""


@dataclasses.dataclass(frozen=True)
class Point:
    index: int
    name: str  # the workdir's name under the sweep root
    overrides: dict[str, Any]  # the swept values (what the results table shows)
    config_arg: str  # "path.py[:key=value,...]" for --config
    flags: tuple[str, ...]  # "--config.<field>=<value>" flags (swept and fixed)

    def train_command(self, workdir: str, python: str = sys.executable) -> list[str]:
        """The command that trains (or resumes) this point in `workdir`."""
        return [
            python, "-m", "experiments.train",
            f"--config={self.config_arg}", f"--workdir={workdir}", *self.flags,
        ]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Plan:
    config_arg: str
    sweep: sg.Sweep
    points: tuple[Point, ...]  # the grid's points (empty for a search: Optuna picks them)

    @property
    def fingerprint(self) -> str:
        """Identifies the sweep: its config, points (or search space), metric and goal."""
        described = {
            "config": self.config_arg,
            "points": [dataclasses.asdict(p) for p in self.points],
            "search": repr(self.sweep.search),
            "metric": self.sweep.metric,
            "goal": self.sweep.goal,
            "fixed": _jsonable(self.sweep.fixed),
        }
        text = json.dumps(described, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        kind = (
            f"search of {self.sweep.search.n_trials} trials"
            if self.sweep.search
            else (f"grid of {len(self.points)} points")
        )
        return f"{self.config_arg}: {kind}, metric {self.sweep.metric} ({self.sweep.goal})"


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=repr))


def load_sweep(config_path: str) -> sg.Sweep:
    """Imports the config file and returns its `get_sweep()`."""
    path = epath.Path(config_path)
    if not path.is_file():
        raise SweepError(f"config file {config_path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_vlax_sweep_{path.stem}", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_sweep", None)):
        raise SweepError(
            f"{config_path} defines no get_sweep(); see experiments/sweeps/grid.py for the format"
        )
    try:
        sweep = module.get_sweep()
    except ValueError as e:  # e.g. an empty grid, raised by sweep_grid.Sweep
        raise SweepError(f"{config_path}: get_sweep(): {e}") from e
    if not isinstance(sweep, sg.Sweep):
        raise SweepError(f"{config_path}: get_sweep() must return a sweep_grid.Sweep")
    return sweep


def load_plan(config_arg: str) -> Plan:
    """Resolves and checks every point of the sweep `config_arg` defines."""
    path, _, base_args = config_arg.partition(":")
    sweep = load_sweep(path)
    points: list[Point] = []
    if sweep.search is None:
        for i, overrides in enumerate(sweep.grid):
            points.append(make_point(i, path, base_args, {**sweep.fixed, **overrides}, overrides))
        by_name: dict[str, Point] = {}
        for p in points:
            if p.name in by_name:
                raise SweepError(
                    f"points {by_name[p.name].index} ({by_name[p.name].overrides}) and {p.index} "
                    f"({p.overrides}) would share the workdir {p.name!r}: give one a name with "
                    "sweep_grid.named(...)"
                )
            by_name[p.name] = p
    else:
        for field in sweep.search.space:
            if field.startswith(":"):
                raise SweepError(f"search field {field!r}: a search sets config fields only")
        # The space's fields must exist: check them with one value each.
        probe = {f: _probe_value(d) for f, d in sweep.search.space.items()}
        make_point(0, path, base_args, {**sweep.fixed, **probe}, probe)
    return Plan(config_arg=config_arg, sweep=sweep, points=tuple(points))


def _probe_value(d: sg.Distribution) -> Any:
    if d.kind == "choice":
        return d.options[0]
    return int(d.low) if d.kind == "int" else float(d.low)


def make_point(
    index: int,
    path: str,
    base_args: str,
    merged: Mapping[str, Any],
    swept: Mapping[str, Any],
    name: str | None = None,
) -> Point:
    """Builds a point's command line and parses it like the trainer will (SweepError if not)."""
    where = f"sweep point {index} {dict(swept)}"
    args = [a for a in base_args.split(",") if a] if base_args else []
    fields: list[str] = []
    for key, value in merged.items():
        if key == sg.NAME_KEY:
            continue
        if key.startswith(":"):
            args = [a for a in args if a.partition("=")[0] != key[1:]]
            args.append(f"{key[1:]}={_arg_text(value)}")
        else:
            fields.append(f"{key}={_arg_text(value)}")
    config_arg = path + (":" + ",".join(args) if args else "")
    try:
        config = config_utils.load_config(config_arg, fields)
    except config_utils.ConfigError as e:
        raise SweepError(f"{where}: {e}") from None
    for key, value in merged.items():
        if key == sg.NAME_KEY or key.startswith(":"):
            continue
        got = _lookup(config, key)
        if not _same(got, value):
            raise SweepError(
                f"{where}: {key}={value!r} became {got!r} ({type(got).__name__}) in the config; "
                f"give a value of the field's type"
            )
    try:
        point_name = name or sg.point_name(swept)
    except ValueError as e:
        raise SweepError(f"{where}: {e}") from None
    return Point(
        index=index,
        name=point_name,
        overrides={k: v for k, v in swept.items() if k != sg.NAME_KEY},
        config_arg=config_arg,
        flags=tuple(f"--config.{f}" for f in fields),
    )


def _arg_text(value: Any) -> str:
    """A value as ml_collections' flag parser reads it back."""
    if isinstance(value, str):
        return value
    return repr(value)


def _lookup(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want or got == want and type(got) is type(want)
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return float(got) == float(want)
    return got == want


def search_point(plan: Plan, number: int, params: Mapping[str, Any]) -> Point:
    """The point Optuna's trial `number` suggested (a search's points are made on the fly)."""
    path, _, base_args = plan.config_arg.partition(":")
    return make_point(
        number,
        path,
        base_args,
        {**plan.sweep.fixed, **params},
        params,
        name=f"trial_{number:04d}",
    )


def check_fields(plan: Plan, fields: Sequence[str]) -> None:
    """Raises SweepError if a results/plot field is not one the sweep sets."""
    known = set(plan.sweep.swept_fields)
    for p in plan.points:
        known.update(p.overrides)
    for f in fields:
        if f and f not in known:
            raise SweepError(f"{f!r} is not a swept field; the sweep sets {sorted(known)}")
