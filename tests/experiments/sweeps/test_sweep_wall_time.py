"""A point's wall time in the results is its training time over every launch: a point that was
killed and resumed reports both launches, and a launch keeps its time on its trial while it
trains, so a worker killed mid-run still leaves what it had spent."""

import json
import os
import sys
import textwrap

import optuna
import pytest

from experiments.sweeps import grid as sg
from experiments.sweeps import plan as sweep_plan
from experiments.sweeps import results as sweep_results
from experiments.sweeps import study as sweep_study
from experiments.sweeps import worker as sweep_worker

METRIC = "zero_shot/top1"


def _plan() -> sweep_plan.Plan:
    point = sweep_plan.Point(
        index=0,
        name="lr=0.001",
        overrides={"optim.lr": 1e-3},
        config_arg="experiments/configs/clip/tiny.py",
        flags=("--config.optim.lr=0.001",),
    )
    sweep = sg.Sweep(grid=[{"optim.lr": 1e-3}], metric=METRIC)
    return sweep_plan.Plan(config_arg=point.config_arg, sweep=sweep, points=(point,))


def _launch(study, *, status, wall_s=None, value=None):
    """A trial of point 0 as a worker leaves it (FAIL unless it has a value); queued first, as
    a re-run queues a point to retry."""
    study.enqueue_trial({"point": 0}, user_attrs={"point": 0})
    trial = study.ask()
    trial.suggest_categorical("point", [0])
    trial.set_user_attr("status", status)
    if wall_s is not None:
        trial.set_user_attr("wall_s", wall_s)
    if value is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, value)


def test_a_resumed_point_reports_the_wall_time_of_all_its_launches(tmp_path):
    plan, root = _plan(), str(tmp_path)
    study = sweep_study.open_study(root, plan)
    _launch(study, status="interrupted", wall_s=30.0)  # killed: time up to its last heartbeat
    _launch(study, status="duplicate")  # another worker's copy: never trained
    _launch(study, status="failed", wall_s=4.5)  # the trainer crashed; the retry resumed
    _launch(study, status="complete", wall_s=12.5, value=0.5)
    (row,) = sweep_results.rows(study, plan, root)
    assert row["status"] == "complete"
    assert row["wall_s"] == pytest.approx(30.0 + 4.5 + 12.5)


def test_a_point_never_launched_has_no_wall_time(tmp_path):
    plan, root = _plan(), str(tmp_path)
    study = sweep_study.open_study(root, plan)
    (row,) = sweep_results.rows(study, plan, root)
    assert row["status"] == "pending" and row["wall_s"] is None


# A stand-in for `experiments.train`: after `sleep` seconds it reads, from the study, the wall
# time its own running trial holds, then writes final results with the sweep's metric.
_TRAIN = """
import json, os, sys, time
import optuna
from experiments.sweeps import study as sweep_study
workdir, sleep = sys.argv[1], float(sys.argv[2])
time.sleep(sleep)
study = optuna.load_study(
    study_name=sweep_study.STUDY_NAME, storage=sweep_study.storage_for(os.path.dirname(workdir))
)
(running,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
with open(os.path.join(workdir, "seen_wall_s"), "w") as f:
    json.dump(running.user_attrs.get("wall_s"), f)
with open(os.path.join(workdir, "eval_results.json"), "w") as f:
    json.dump({"1": {"zero_shot": {"top1": 0.5}}}, f)
"""


def test_a_launch_keeps_its_wall_time_on_its_trial_while_it_trains(tmp_path, monkeypatch):
    sleep = 1.5
    script = tmp_path / "fake_train.py"
    script.write_text(textwrap.dedent(_TRAIN))
    root = str(tmp_path / "root")
    monkeypatch.setattr(
        sweep_plan.Point,
        "train_command",
        lambda self, workdir, python=sys.executable: [python, str(script), workdir, str(sleep)],
    )
    monkeypatch.setattr(sweep_study, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(sweep_worker, "POLL_S", 0.05)
    plan = _plan()
    assert sweep_worker.run_worker(root, plan) == 1

    workdir = os.path.join(root, plan.points[0].name)
    with open(os.path.join(workdir, "seen_wall_s")) as f:
        seen = json.loads(f.read())
    study = sweep_study.open_study(root, plan)
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    # What a worker killed at that moment would have left: the launch's time up to its last
    # heartbeat (the process slept `sleep` s after starting; heartbeats come every 0.2 s).
    assert seen is not None and sleep - 0.3 <= seen <= trial.user_attrs["wall_s"]
