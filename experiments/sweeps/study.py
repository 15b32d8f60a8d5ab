"""The sweep's Optuna study: one per sweep root, in a journal file there by default.

A grid is a `GridSampler` over one categorical parameter, "point" (the index into the plan's
points), so products, zips and explicit lists all map to one grid; a search is a TPE study
over the space's fields (with a `MedianPruner` when it prunes). The storage is Optuna's
journal file `<root>/optuna_journal.log` (embedded, file-locked, safe for many local worker
processes and for workers on a shared filesystem), or any database URL Optuna accepts
(`--storage mysql://...`) for workers that share no filesystem.

Each trial is one launch of a point and records, as user attributes, the point's name,
workdir, log path, overrides, final metrics, steps, the launch's wall time (kept current with
the heartbeat), status and a heartbeat (host, pid, time) that lets a re-run tell an
interrupted trial (its worker is gone) from one still running.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import optuna
from etils import epath

from experiments.sweeps import plan as sweep_plan

STUDY_NAME = "vlax-sweep"
JOURNAL_FILE = "optuna_journal.log"
HEARTBEAT_S = 20.0  # a worker refreshes its trial's heartbeat this often
STALE_S = 300.0  # a RUNNING trial silent this long (or whose local pid is gone) was interrupted


class SweepMismatchError(sweep_plan.SweepError):
    """The sweep root holds the study of a different sweep."""


def storage_for(root: str, url: str | None = None):
    """The study storage: `url` if given, else the journal file in `root`."""
    if url:
        return url
    path = epath.Path(root) / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler whose `after_trial` does not call `study.stop()`: that only works inside
    `study.optimize`, and raising there would leave an ask/tell trial RUNNING. Workers stop
    when `grid_done` says so."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def sampler_for(plan: sweep_plan.Plan) -> optuna.samplers.BaseSampler:
    if plan.sweep.search is None:
        return _GridSampler({"point": list(range(len(plan.points)))}, seed=0)
    return optuna.samplers.TPESampler(seed=plan.sweep.search.seed)


def pruner_for(plan: sweep_plan.Plan) -> optuna.pruners.BasePruner:
    if plan.sweep.search is not None and plan.sweep.search.prune:
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def open_study(root: str, plan: sweep_plan.Plan, storage_url: str | None = None) -> optuna.Study:
    """Creates or loads the sweep's study; refuses a root that holds another sweep's."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage_for(root, storage_url),
        sampler=sampler_for(plan),
        pruner=pruner_for(plan),
        direction=plan.sweep.goal,
        load_if_exists=True,
    )
    existing = study.user_attrs.get("fingerprint")
    if existing is None:
        study.set_user_attr("fingerprint", plan.fingerprint)
        study.set_user_attr("sweep", plan.describe())
    elif existing != plan.fingerprint:
        where = storage_url or str(epath.Path(root) / JOURNAL_FILE)
        raise SweepMismatchError(
            f"{root} holds a different sweep's study ({study.user_attrs.get('sweep')}); this "
            f"is {plan.describe()}. Use another --workdir, or delete {where} (and the point "
            "workdirs you do not want resumed) to start this sweep fresh."
        )
    return study


def point_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """The grid point index a trial trains (None before it was suggested)."""
    value = trial.params.get("point", trial.user_attrs.get("point"))
    return None if value is None else int(value)


def heartbeat() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "start": _start_time(pid),
        "time": time.time(),
    }


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # fields after "(comm)"
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[19]  # field 22: start time since boot


def _alive(pid: int, start: str | None) -> bool:
    """The heartbeat's process still runs (not a zombie, not a reused pid)."""
    stat = _proc_stat(pid)
    if stat is None:
        if os.path.isdir("/proc"):
            return False
        try:  # no procfs: ask the kernel
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[0] != "Z" and (start is None or stat[19] == start)


def is_stale(trial: optuna.trial.FrozenTrial, now: float | None = None) -> bool:
    """A RUNNING trial whose worker is gone: its pid is dead on this host, or it is silent."""
    beat = trial.user_attrs.get("heartbeat")
    if trial.state != optuna.trial.TrialState.RUNNING:
        return False
    if not beat:
        return (now or time.time()) - trial.datetime_start.timestamp() > STALE_S
    if beat["host"] == socket.gethostname():
        return not _alive(int(beat["pid"]), beat.get("start"))
    return (now or time.time()) - float(beat["time"]) > STALE_S


def mark_interrupted(study: optuna.Study) -> list[int]:
    """Fails the RUNNING trials whose workers are gone (status "interrupted"); returns them."""
    marked = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if is_stale(t):
            study._storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            marked.append(t.number)
    return marked


def requeue_unfinished(study: optuna.Study, plan: sweep_plan.Plan) -> list[int]:
    """Enqueues again what a re-run must retry: every grid point whose latest trial failed or
    was interrupted (GridSampler alone counts a failed point as visited), and every
    interrupted search trial (same parameters and workdir, so it resumes from its
    checkpoint). Returns the grid points / trial numbers queued."""
    queued = []
    if plan.sweep.search is not None:
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
            if t.user_attrs.get("status") == "interrupted" and not t.user_attrs.get("requeued"):
                number = t.user_attrs.get("workdir_number", t.number)
                study.enqueue_trial(t.params, user_attrs={"workdir_number": number})
                study._storage.set_trial_user_attr(t._trial_id, "requeued", True)
                queued.append(number)
        return queued
    latest: dict[int, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        p = point_of(t)
        if p is not None and (p not in latest or t.number > latest[p].number):
            latest[p] = t
    for p, t in sorted(latest.items()):
        if t.state == optuna.trial.TrialState.FAIL:
            study.enqueue_trial({"point": p}, user_attrs={"point": p})
            queued.append(p)
    return queued


def grid_done(study: optuna.Study, plan: sweep_plan.Plan) -> bool:
    """No grid point is left to start in this run: none waiting, none never tried."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
        return False
    tried = {point_of(t) for t in trials}
    return all(p.index in tried for p in plan.points)


def search_done(study: optuna.Study, plan: sweep_plan.Plan) -> bool:
    """The search has started its n_trials and none waits (an interrupted trial is not
    counted: its re-queued copy is)."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
        return False
    counted = [t for t in trials if t.user_attrs.get("status") != "interrupted"]
    return len(counted) >= plan.sweep.search.n_trials
