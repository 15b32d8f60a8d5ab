"""A sweep worker: asks the study for a point, trains it in its own workdir, tells the result.

Every point trains in a subprocess (`python -m experiments.train`, the point's exact
command line), its output appended to `<root>/<point>/train.log`. Re-running a point in its
workdir resumes it from its latest checkpoint (the trainer's own resume). While it trains, the
worker refreshes the trial's heartbeat and, for a pruning search, reports each periodic
evaluation to Optuna and stops the run if the pruner says so. The training process dies with
its worker (Linux parent-death signal), so a killed sweep leaves no orphan writing a workdir.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

import optuna
from etils import epath

from experiments.sweeps import plan as sweep_plan
from experiments.sweeps import study as sweep_study
from experiments.training import checkpointing

# experiments/sweeps/worker.py -> the repo root, three levels up.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POLL_S = 1.0
RESULTS_FILE = "eval_results.json"  # experiments/training/eval_runner.py


def die_with_parent() -> None:
    """A `preexec_fn` (runs in the child between fork and exec): the kernel kills the child
    when the process that started it dies, so a killed sweep leaves no orphan trainers."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child_env() -> dict[str, str]:
    """The environment of a training process: this repo importable from any directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


@contextlib.contextmanager
def _locked(root: str):
    """Serialises ask() among the workers sharing a root, so two never take one point."""
    with open(os.path.join(root, ".ask.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def final_metrics(workdir: str) -> tuple[int | None, dict[str, float]]:
    """(last evaluated step, {"<evaluator>/<metric>": value}) from a workdir's results."""
    path = epath.Path(workdir) / RESULTS_FILE
    if not path.exists():
        return None, {}
    history = json.loads(path.read_text())
    if not history:
        return None, {}
    step = max(int(s) for s in history)
    flat = {}
    for evaluator, metrics in history[str(step)].items():
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                flat[f"{evaluator}/{name}"] = float(value)
    return step, flat


def _intermediate(workdir: str, metric: str) -> dict[int, float]:
    path = epath.Path(workdir) / RESULTS_FILE
    if not path.exists():
        return {}
    try:
        history = json.loads(path.read_text())
    except json.JSONDecodeError:  # written atomically, but be safe on odd filesystems
        return {}
    evaluator, _, name = metric.partition("/")
    return {
        int(s): float(r[evaluator][name])
        for s, r in history.items()
        if isinstance(r.get(evaluator, {}).get(name), (int, float))
    }


def _take_point(study: optuna.Study, plan: sweep_plan.Plan):
    """Asks for a trial and resolves its point; None when nothing is left to start."""
    if plan.sweep.search is None:
        if sweep_study.grid_done(study, plan):
            return None
        trial = study.ask()
        index = trial.suggest_categorical("point", list(range(len(plan.points))))
        busy = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number
            and sweep_study.point_of(t) == index
            and t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE)
            and t.user_attrs.get("status") != "duplicate"
        ]
        if busy:  # another worker (without our lock) took it first
            trial.set_user_attr("status", "duplicate")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return _take_point(study, plan)
        return trial, plan.points[index]
    if sweep_study.search_done(study, plan):
        return None
    trial = study.ask()
    params = {f: _suggest(trial, f, d) for f, d in plan.sweep.search.space.items()}
    number = int(trial.user_attrs.get("workdir_number", trial.number))
    return trial, sweep_plan.search_point(plan, number, params)


def _suggest(trial: optuna.Trial, field: str, d) -> Any:
    if d.kind == "choice":
        return trial.suggest_categorical(field, list(d.options))
    if d.kind == "int":
        return trial.suggest_int(field, int(d.low), int(d.high))
    return trial.suggest_float(field, d.low, d.high, log=d.kind == "loguniform")


def run_worker(
    root: str,
    plan: sweep_plan.Plan,
    storage_url: str | None = None,
    max_points: int | None = None,
) -> int:
    """Trains points until none is left (or `max_points`); returns how many it ran."""
    study = sweep_study.open_study(root, plan, storage_url)
    ran = 0
    while max_points is None or ran < max_points:
        with _locked(root):
            taken = _take_point(study, plan)
        if taken is None:
            break
        trial, point = taken
        train_point(study, trial, point, root, plan)
        ran += 1
    return ran


def train_point(study, trial, point: sweep_plan.Point, root: str, plan: sweep_plan.Plan) -> str:
    """Trains one point (resuming its workdir) and tells the study; returns its status."""
    workdir = os.path.join(root, point.name)
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "train.log")
    cmd = point.train_command(workdir)
    attrs = {
        "name": point.name,
        "workdir": workdir,
        "log": log_path,
        "overrides": json.dumps(point.overrides, default=repr),
        "status": "running",
        "heartbeat": sweep_study.heartbeat(),
    }
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if finished_run(workdir):
        # Trained to the end before (its worker died before telling the study): no rerun.
        logging.info("sweep: %s already finished in %s", point.name, workdir)
        return _tell(study, trial, plan, workdir, 0, log_path, wall=0.0, pruned=False)
    logging.info("sweep: training %s (trial %d) in %s", point.name, trial.number, workdir)
    start = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n# sweep worker pid {os.getpid()}, trial {trial.number}: {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), preexec_fn=die_with_parent
        )
        status = _watch(proc, study, trial, workdir, plan, start)
    wall = time.time() - start
    return _tell(
        study, trial, plan, workdir, proc.returncode, log_path, wall=wall, pruned=status == "pruned"
    )


def finished_run(workdir: str) -> bool:
    """The workdir holds a run trained to its total_steps and evaluated there."""
    config_path = epath.Path(workdir) / "config.json"
    if not config_path.exists():
        return False
    total = json.loads(config_path.read_text()).get("total_steps")
    step, _ = final_metrics(workdir)
    return total is not None and step == total and checkpointing.latest_step(workdir) == total


def _tell(study, trial, plan, workdir, returncode, log_path, *, wall, pruned) -> str:
    """Records a finished training process on its trial (`wall`: this launch's seconds; the
    results add up the launches of a point); returns the status."""
    trial.set_user_attr("wall_s", round(wall, 1))
    step, metrics = final_metrics(workdir)
    trial.set_user_attr("steps", step)
    trial.set_user_attr("metrics", metrics)
    if pruned:
        trial.set_user_attr("status", "pruned")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    if returncode == 0 and plan.sweep.metric in metrics:
        trial.set_user_attr("status", "complete")
        study.tell(trial, metrics[plan.sweep.metric])
        return "complete"
    error = (
        _last_error(log_path)
        if returncode
        else (
            f"finished without {plan.sweep.metric!r} in its final results (has {sorted(metrics)})"
        )
    )
    trial.set_user_attr("status", "failed")
    trial.set_user_attr("error", error)
    logging.warning("sweep: %s failed (log %s): %s", workdir, log_path, error)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return "failed"


def _watch(proc, study, trial, workdir: str, plan: sweep_plan.Plan, start: float) -> str:
    """Waits for the training process, heart-beating and (searches) reporting/pruning.

    Each heartbeat also stores the launch's wall time so far (`start`: when it began) on the
    trial, so a worker killed outright leaves its launch counted up to its last heartbeat."""
    last_beat, reported = time.time(), set()
    prune = plan.sweep.search is not None and plan.sweep.search.prune

    def stop(signum, frame):  # a polite kill of the worker stops its training too
        proc.terminate()
        trial.set_user_attr("wall_s", round(time.time() - start, 1))
        trial.set_user_attr("status", "interrupted")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        sys.exit(128 + signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while proc.poll() is None:
            time.sleep(POLL_S)
            if time.time() - last_beat > sweep_study.HEARTBEAT_S:
                trial.set_user_attr("heartbeat", sweep_study.heartbeat())
                last_beat = time.time()
                trial.set_user_attr("wall_s", round(last_beat - start, 1))
            if prune:
                for step, value in sorted(_intermediate(workdir, plan.sweep.metric).items()):
                    if step not in reported:
                        trial.report(value, step)
                        reported.add(step)
                if reported and trial.should_prune():
                    proc.terminate()
                    proc.wait()
                    return "pruned"
        return "exited"
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _last_error(log_path: str) -> str:
    """The last non-empty line of a log (usually the exception), for the results table."""
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1][:300] if lines else "no output"
