"""Sweep definitions: what a config file's `get_sweep()` returns.

    from experiments.sweeps import grid as sg

    def get_sweep():
        return sg.Sweep(
            grid=sg.product(
                sg.values("model.loss", ["softmax", "sigmoid"]),
                sg.values("optim.lr", [1e-3, 3e-3]),
            ),
            metric="zero_shot/top1",  # "<evaluator>/<metric>" of the final evaluation
            fixed={"total_steps": 200},  # overrides every point shares
        )

A point is a dict of overrides: config field paths ("optim.lr") set like `--config.optim.lr`,
and keys starting with ":" set arguments of the config file itself (":variant=B/16", the
`path.py:key=value` syntax). `product` crosses axes, `zip_` pairs them element-wise, `points`
lists explicit points and `named` gives one a workdir name. A `Search` instead of a grid asks
Optuna's TPE sampler for `n_trials` points from a space of `uniform` / `loguniform` /
`int_range` / `choice` distributions.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

NAME_KEY = "_name"  # a point's explicit workdir name (`named`)


def values(field: str, options: Sequence[Any]) -> list[dict[str, Any]]:
    """One axis: [{field: v} for v in options]."""
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise TypeError(f"values({field!r}, ...) needs a list of values, got {options!r}")
    return [{field: v} for v in options]


def product(*axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The cross product of axes (each a list of points), later axes varying fastest."""
    out = []
    for combo in itertools.product(*axes):
        point: dict[str, Any] = {}
        for part in combo:
            _merge(point, part)
        out.append(point)
    return out


def zip_(*axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Element-wise pairs of equally long axes."""
    lengths = {len(a) for a in axes}
    if len(lengths) > 1:
        raise ValueError(f"zip_ needs axes of one length, got lengths {[len(a) for a in axes]}")
    out = []
    for combo in zip(*axes, strict=True):
        point: dict[str, Any] = {}
        for part in combo:
            _merge(point, part)
        out.append(point)
    return out


def points(*given: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Explicit points."""
    return [dict(p) for p in given]


def named(name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A point with an explicit workdir name."""
    return {NAME_KEY: name, **overrides}


def _merge(point: dict[str, Any], part: Mapping[str, Any]) -> None:
    for key, value in part.items():
        if key in point and point[key] != value:
            raise ValueError(f"two axes set {key!r} ({point[key]!r} and {value!r}) in one point")
        point[key] = value


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A search dimension: kind in {"uniform", "loguniform", "int", "choice"}."""

    kind: str
    low: float | None = None
    high: float | None = None
    options: tuple[Any, ...] = ()


def uniform(low: float, high: float) -> Distribution:
    return Distribution("uniform", float(low), float(high))


def loguniform(low: float, high: float) -> Distribution:
    if low <= 0:
        raise ValueError(f"loguniform needs low > 0, got {low}")
    return Distribution("loguniform", float(low), float(high))


def int_range(low: int, high: int) -> Distribution:
    return Distribution("int", int(low), int(high))


def choice(options: Sequence[Any]) -> Distribution:
    return Distribution("choice", options=tuple(options))


@dataclasses.dataclass(frozen=True)
class Search:
    """A hyper-parameter search: `n_trials` points from `space` ({field: Distribution}).
    `prune` stops trials whose intermediate metric trails the median (Optuna's MedianPruner,
    fed by each periodic evaluation)."""

    space: Mapping[str, Distribution]
    n_trials: int
    prune: bool = False
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A grid (list of points) or a search, the metric that ranks them and shared overrides.

    metric: "<evaluator>/<metric>" in the final eval results (e.g. "zero_shot/top1").
    goal: "maximize" or "minimize". fixed: overrides every point gets.
    """

    metric: str
    grid: Sequence[Mapping[str, Any]] = ()
    search: Search | None = None
    goal: str = "maximize"
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if (self.search is None) == (not self.grid):
            if self.search is None:
                raise ValueError("the sweep's grid is empty: give points (or a Search)")
            raise ValueError("a Sweep has either a grid or a search, not both")
        if self.goal not in ("maximize", "minimize"):
            raise ValueError(f"goal must be 'maximize' or 'minimize', got {self.goal!r}")
        if "/" not in self.metric:
            raise ValueError(f"metric must be '<evaluator>/<metric>', got {self.metric!r}")
        if self.search is not None:
            if self.search.n_trials < 1:
                raise ValueError(f"Search.n_trials must be >= 1, got {self.search.n_trials}")
            if not self.search.space:
                raise ValueError("the search space is empty")

    @property
    def swept_fields(self) -> list[str]:
        """The fields that vary between points, in first-seen order."""
        if self.search is not None:
            return list(self.search.space)
        seen: dict[str, set] = {}
        for p in self.grid:
            for k, v in p.items():
                if k != NAME_KEY:
                    seen.setdefault(k, set()).add(repr(v))
        return [k for k, vs in seen.items() if len(vs) > 1 or len(self.grid) == 1]


def point_name(point: Mapping[str, Any]) -> str:
    """A workdir name from a point's overrides: "loss=sigmoid,lr=0.003" -> safe characters."""
    if NAME_KEY in point:
        name = str(point[NAME_KEY])
    else:
        parts = []
        for key, value in point.items():
            short = key.lstrip(":").rsplit(".", 1)[-1]
            parts.append(f"{short}={_short_value(value)}")
        name = ",".join(parts) or "default"
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
    if safe in ("", ".", ".."):
        raise ValueError(f"point name {name!r} is not a usable directory name")
    return safe


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (tuple, list)):
        return "-".join(_short_value(v) for v in value)
    return str(value)
