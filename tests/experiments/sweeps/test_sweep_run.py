"""A 4-point sweep with 2 local workers, SIGKILLed after two points finished, then re-run:
finished points are not retrained, the interrupted one resumes from its checkpoint, and
results.csv has one row per point with its overrides and final metrics."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest

from experiments.sweeps import study as sweep_study
from experiments.training import checkpointing
from tests.experiments.conftest import TINY_SOURCE

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
STEPS = 1000


def _config_file(tmp_path, data_dir) -> str:
    path = tmp_path / "sweep_cfg.py"
    path.write_text(
        textwrap.dedent(
            f"""
            from experiments.sweeps import grid as sg
            from experiments.configs import common


            def get_config():
                config = common.base(total_steps={STEPS}, batch_size=16)
                config.objective = "contrastive"
                tower = dict(width=16, depth=1, mlp_dim=32, num_heads=2, num_classes=16)
                config.model = dict(
                    image=dict(tower, patch_size=8, pool_type="gap"),
                    text=dict(tower, causal=True, pool_type="eos"),
                    loss="softmax",
                )
                config.data, config.evals = common.data_and_evals(
                    "vlax_shapes", image_size=32, max_len=8, vocab_size=64, every_steps=0,
                    eval_batch=16,
                )
                config.data.data_dir = {data_dir!r}
                config.data.source = {dict(TINY_SOURCE)!r}
                config.data.augment = False
                for name in [k for k in config.evals.keys() if k != "zero_shot"]:
                    del config.evals[name]
                config.optim = common.adamw(lr=1e-3, warmup_steps=5, weight_decay=0.1)
                config.checkpoint.every_steps = 50
                config.checkpoint.async_save = False
                config.log_every_steps = 50
                return config


            def get_sweep():
                return sg.Sweep(
                    grid=sg.product(
                        sg.values("model.loss", ["softmax", "sigmoid"]),
                        sg.values("optim.lr", [1e-3, 2e-3]),
                    ),
                    metric="zero_shot/top1",
                )
            """
        )
    )
    return str(path)


def _sweep(config, root, *extra):
    return [
        sys.executable, "-m", "experiments.sweep", f"--config={config}", f"--workdir={root}",
        "--workers=2", *extra,
    ]  # fmt: skip


def _finished(root):
    """The points whose trials the study has recorded as complete."""
    journal = os.path.join(root, sweep_study.JOURNAL_FILE)
    if not os.path.exists(journal):
        return []
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    try:
        study = optuna.load_study(study_name=sweep_study.STUDY_NAME, storage=storage)
    except KeyError:  # not created yet
        return []
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t.user_attrs["name"] for t in done]


def _read(*parts):
    with open(os.path.join(*parts)) as f:
        return f.read()


def _launches(workdir):
    with open(os.path.join(workdir, "launches.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_killed_sweep_resumes_without_retraining(shapes_data_dir, tmp_path):
    config, root = _config_file(tmp_path, shapes_data_dir), str(tmp_path / "sweep")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    first = subprocess.Popen(
        _sweep(config, root), cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline, interrupted = time.time() + 900, None
    try:
        while time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
            if not os.path.isdir(root):
                continue
            done = _finished(root)
            running = [
                d for d in os.listdir(root)
                if d not in done and os.path.isdir(os.path.join(root, d))
                and checkpointing.latest_step(os.path.join(root, d))
            ]  # fmt: skip
            if len(done) >= 2 and running:
                interrupted = running[0]
                break
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the sweep, its workers and their trainings
        first.wait()
    assert interrupted is not None, first.stdout.read()[-3000:]
    done = _finished(root)
    assert len(done) == 2, done
    step_at_kill = checkpointing.latest_step(os.path.join(root, interrupted))
    assert 0 < step_at_kill < STEPS
    results_at_kill = {d: _read(root, d, "eval_results.json") for d in done}

    second = subprocess.run(
        _sweep(config, root), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    names = ["loss=softmax,lr=0.001", "loss=softmax,lr=0.002", "loss=sigmoid,lr=0.001",
             "loss=sigmoid,lr=0.002"]  # fmt: skip
    assert sorted(os.listdir(root)) == sorted([*names, *_files(root)])
    for d in done:  # not retrained: one launch, results untouched
        assert len(_launches(os.path.join(root, d))) == 1
        assert _read(root, d, "eval_results.json") == results_at_kill[d]
    launches = _launches(os.path.join(root, interrupted))
    assert len(launches) == 2 and launches[1]["start_step"] >= step_at_kill

    with open(os.path.join(root, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["point"] for r in rows) == sorted(names)
    for row in rows:
        loss, lr = row["point"].split(",")
        assert row["model.loss"] == loss.split("=")[1]
        assert float(row["optim.lr"]) == float(lr.split("=")[1])
        assert row["status"] == "complete" and int(row["steps"]) == STEPS
        final = json.loads(_read(root, row["point"], "eval_results.json"))
        assert float(row["zero_shot/top1"]) == pytest.approx(final[str(STEPS)]["zero_shot"]["top1"])
    values = [float(r["zero_shot/top1"]) for r in rows]
    assert values == sorted(values, reverse=True)  # best first
    assert os.path.getsize(os.path.join(root, "results.png")) > 1000
    assert "| point |" in _read(root, "results.md")


def _files(root):
    return [f for f in os.listdir(root) if not os.path.isdir(os.path.join(root, f))]
