"""A sweep's results: `<root>/results.csv`, `results.md` (sorted by the metric) and
`results.png` (the metric against a swept field, one line per setting of the other fields).

Rows come from the study's trials (status, log, wall time) and the points' workdirs (final
eval metrics and steps), so points trained outside the study (`--launcher print`) are
collected too. `wall_s` is a point's training wall time over all its launches (a point killed
and resumed has a trial per launch; a launch whose worker was killed outright counts up to its
last heartbeat, at most `study.HEARTBEAT_S` short).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import optuna
from etils import epath

from experiments.sweeps import plan as sweep_plan
from experiments.sweeps import study as sweep_study
from experiments.sweeps import worker as sweep_worker

STATUS_ORDER = {"complete": 0, "running": 1, "pruned": 2, "failed": 3, "interrupted": 4}


def _launches(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """A point's trials that launched it (a duplicate is another worker's copy, never run)."""
    return [t for t in trials if t.user_attrs.get("status") != "duplicate"]


def _best_trial(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    """The trial that speaks for a point: a completed one, else the latest."""
    trials = _launches(trials)
    if not trials:
        return None
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return max(done or trials, key=lambda t: t.number)


def _wall_s(trials: list[optuna.trial.FrozenTrial]) -> float | None:
    """Seconds of training over every launch of a point (None if none recorded any)."""
    walls = [t.user_attrs["wall_s"] for t in _launches(trials) if "wall_s" in t.user_attrs]
    return round(sum(walls), 1) if walls else None


def _status(trial: optuna.trial.FrozenTrial | None, steps: int | None) -> str:
    if trial is None:
        return "trained outside the study" if steps is not None else "pending"
    status = trial.user_attrs.get("status", trial.state.name.lower())
    if status == "running" and sweep_study.is_stale(trial):
        return "interrupted"
    return status


def rows(study: optuna.Study | None, plan: sweep_plan.Plan, root: str) -> list[dict[str, Any]]:
    """One row per point (grid) or per trial (search)."""
    trials = [] if study is None else study.get_trials(deepcopy=False)
    out = []
    if plan.sweep.search is None:
        by_point: dict[int, list] = {}
        for t in trials:
            if sweep_study.point_of(t) is not None:
                by_point.setdefault(sweep_study.point_of(t), []).append(t)
        entries = [(p.name, p.overrides, by_point.get(p.index, [])) for p in plan.points]
    else:
        by_number: dict[int, list] = {}
        for t in trials:
            by_number.setdefault(int(t.user_attrs.get("workdir_number", t.number)), []).append(t)
        entries = []
        for number, ts in sorted(by_number.items()):
            t = _best_trial(ts)
            if t is not None:
                entries.append((f"trial_{number:04d}", dict(t.params), ts))
    for name, overrides, point_trials in entries:
        trial = _best_trial(point_trials)
        workdir = str(epath.Path(root) / name)
        steps, metrics = sweep_worker.final_metrics(workdir)
        row = {"point": name, **{k: _cell(v) for k, v in overrides.items()}}
        row.update(metrics)
        row["steps"] = steps
        row["wall_s"] = _wall_s(point_trials)
        row["status"] = _status(trial, steps)
        row["log"] = str(epath.Path(workdir) / "train.log")
        if trial is not None and trial.user_attrs.get("error"):
            row["error"] = trial.user_attrs["error"]
        out.append(row)
    return out


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else repr(value)


def sort_rows(table: list[dict], metric: str, goal: str) -> list[dict]:
    """Best first by `metric`; rows without it last, in their order."""
    sign = -1.0 if goal == "maximize" else 1.0

    def key(row):
        value = row.get(metric)
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        return (0, sign * value) if ok else (1, 0.0)

    return sorted(table, key=key)


def _columns(table: list[dict], swept: Sequence[str]) -> list[str]:
    fixed_first = ["point", *swept]
    metrics = sorted({k for r in table for k in r if "/" in k})
    tail = ["steps", "wall_s", "status", "log", "error"]
    seen = set(fixed_first) | set(metrics) | set(tail)
    extra = sorted({k for r in table for k in r} - seen)
    return [c for c in [*fixed_first, *extra, *metrics, *tail] if any(c in r for r in table)]


def to_csv(table: list[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in table:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return buf.getvalue()


# Columns results.csv keeps but the markdown table leaves out (reference values, counts).
_MD_HIDDEN = re.compile(r"(^|/)(chance_|num_examples$|distinct_captions$)|^(log|error)$")


def to_markdown(table: list[dict], columns: Sequence[str]) -> str:
    shown = [c for c in columns if not _MD_HIDDEN.search(c)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in table:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in shown) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def plot(table: list[dict], path: str, *, metric: str, x: str, others: Sequence[str]) -> bool:
    """metric vs x, one line per combination of `others`; False when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[Any, float]]] = {}
    for row in table:
        if isinstance(row.get(metric), (int, float)) and row.get(x) is not None:
            label = ", ".join(f"{o}={row.get(o)}" for o in others) or metric
            lines.setdefault(label, []).append((row[x], float(row[metric])))
    if not lines:
        return False
    numeric = all(isinstance(v, (int, float)) for pts in lines.values() for v, _ in pts)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    categories = sorted({str(v) for pts in lines.values() for v, _ in pts})
    for label, pts in sorted(lines.items()):
        pts = sorted(pts, key=lambda p: p[0] if numeric else categories.index(str(p[0])))
        xs = [p[0] if numeric else categories.index(str(p[0])) for p in pts]
        ax.plot(xs, [p[1] for p in pts], marker="o", label=label)
    if numeric:
        values = sorted({v for pts in lines.values() for v, _ in pts})
        if values[0] > 0 and len(values) > 1 and values[-1] / values[0] >= 3:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(values, [f"{v:.3g}" for v in values])
    if not numeric:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write(
    study: optuna.Study | None,
    plan: sweep_plan.Plan,
    root: str,
    *,
    metric: str | None = None,
    plot_x: str | None = None,
) -> dict[str, Any]:
    """Writes results.csv / results.md / results.png under `root`; returns the table."""
    metric = metric or plan.sweep.metric
    swept = plan.sweep.swept_fields
    sweep_plan.check_fields(plan, [plot_x] if plot_x else [])
    table = sort_rows(rows(study, plan, root), metric, plan.sweep.goal)
    columns = _columns(table, swept)
    out = epath.Path(root)
    (out / "results.csv").write_text(to_csv(table, columns))
    md = f"Sweep {plan.describe()}; sorted by {metric}.\n\n" + to_markdown(table, columns)
    (out / "results.md").write_text(md)
    x = plot_x or _default_x(table, swept)
    plotted = False
    if x is not None:
        others = [f for f in swept if f != x]
        plotted = plot(table, str(out / "results.png"), metric=metric, x=x, others=others)
    summary = {"rows": table, "columns": columns, "markdown": md, "plot": plotted, "x": x}
    (out / "results.json").write_text(json.dumps(table, indent=1, default=repr))
    return summary


def _default_x(table: list[dict], swept: Sequence[str]) -> str | None:
    """The first numeric swept field, else the first swept field."""
    for f in swept:
        if all(isinstance(r.get(f), (int, float)) for r in table if f in r):
            return f
    return swept[0] if swept else None
