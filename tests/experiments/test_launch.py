"""The launch files: SkyPilot parses the tasks, and their commands start experiments.train with
flags it defines (the cluster's environment stood in for by variables and stub programs)."""

import json
import os
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# SkyPilot lives in its own venv (requirements-launch.txt); `make test` creates it. Resolved
# through the real source tree, so Bazel's runfiles find it too.
SKY_PYTHON = os.environ.get(
    "VLAX_SKY_PYTHON", str(Path(__file__).resolve().parents[2] / ".venv-sky" / "bin" / "python")
)
_PARSE = """
import json, sys
import sky
t = sky.Task.from_yaml(sys.argv[1])
r = list(t.resources)[0]
print(json.dumps(dict(name=t.name, num_nodes=t.num_nodes, accelerators=r.accelerators,
    accelerator_args=r.accelerator_args, envs=t.envs, setup=t.setup, run=t.run)))
"""
LAUNCH = os.path.join(ROOT, "experiments", "launch")
# A stand-in for python / srun that prints its arguments, one per line.
STUB = '#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n'


def _stub(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(STUB)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def _train_flags():
    """The flag names experiments.train defines (in a subprocess: absl flags are global)."""
    code = (
        "import experiments.train as t\nfrom absl import flags\n"
        "print(' '.join(f.name for f in flags.FLAGS.get_key_flags_for_module(t)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def _from_yaml(name):
    """The task as SkyPilot's own `sky.Task.from_yaml` reads it (offline)."""
    assert os.path.exists(SKY_PYTHON), f"no SkyPilot venv at {SKY_PYTHON}: run `make test`"
    out = subprocess.run(
        [SKY_PYTHON, "-c", _PARSE, os.path.join(LAUNCH, name)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return types.SimpleNamespace(**json.loads(out.stdout.strip().splitlines()[-1]))


def _flag_names(args):
    return {a.split("=")[0].lstrip("-") for a in args if a.startswith("--")}


def _run_section(task, tmp_path, env):
    """Runs the task's `run` script with a stub .venv/bin/python; returns its arguments."""
    _stub(str(tmp_path / ".venv" / "bin" / "python"))
    result = subprocess.run(
        ["bash", "-c", task.run],
        cwd=tmp_path,
        env={**os.environ, **task.envs, **env},
        capture_output=True,
        text=True,
    )
    return result


def test_gpu_task_parses_and_starts_one_process_per_node(tmp_path):
    task = _from_yaml("skypilot_gpu.yaml")
    assert task.num_nodes == 2
    assert task.accelerators == {"H100": 8}
    assert "jax[cuda12]==0.10.2" in task.setup and "requirements.txt" in task.setup
    env = {
        "WORKDIR": "gs://bucket/run",
        "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8",
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_RANK": "1",
        "EXTRA_ARGS": "--config.total_steps=10",
    }
    result = _run_section(task, tmp_path, env)
    assert result.returncode == 0, result.stderr
    args = result.stdout.split("\n")
    assert args[:2] == ["-m", "experiments.train"]
    assert "--coordinator_address=10.0.0.7:8476" in args
    assert "--num_processes=2" in args and "--process_id=1" in args
    assert "--config.total_steps=10" in args
    assert args[args.index("--workdir") + 1] == "gs://bucket/run"
    assert _flag_names(args[2:]) - {"config.total_steps"} <= _train_flags()


def test_gpu_task_without_a_workdir_says_what_to_set(tmp_path):
    task = _from_yaml("skypilot_gpu.yaml")
    result = _run_section(task, tmp_path, {"SKYPILOT_NODE_IPS": "10.0.0.7"})
    assert result.returncode == 2 and "WORKDIR" in result.stderr


def test_tpu_task_parses_and_lets_jax_find_the_pod(tmp_path):
    task = _from_yaml("skypilot_tpu.yaml")
    assert task.num_nodes == 1  # a pod slice is one node; SkyPilot runs on all its hosts
    assert task.accelerators == {"tpu-v5p-32": 1}
    assert task.accelerator_args["runtime_version"] == "v2-alpha-tpuv5"
    assert "jax[tpu]==0.10.2" in task.setup
    result = _run_section(task, tmp_path, {"WORKDIR": "gs://bucket/run"})
    assert result.returncode == 0, result.stderr
    args = result.stdout.split("\n")
    assert args[:2] == ["-m", "experiments.train"] and "--multihost" in args
    assert _flag_names(args[2:]) <= _train_flags()


@pytest.fixture
def fake_srun(tmp_path):
    _stub(str(tmp_path / "bin" / "srun"))
    return {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}


def test_slurm_script_runs_one_task_per_node_with_multihost(fake_srun):
    script = os.path.join(LAUNCH, "slurm.sbatch")
    with open(script) as f:
        directives = [line.split()[1] for line in f if line.startswith("#SBATCH")]
    assert "--ntasks-per-node=1" in directives
    env = {**fake_srun, "CONFIG": "experiments/configs/clip/b16.py", "WORKDIR": "/shared/w"}
    result = subprocess.run(
        ["bash", script, "--config.total_steps=5"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    args = result.stdout.split("\n")
    i = args.index("experiments.train")
    assert args[:i] == ["--kill-on-bad-exit=1", ".venv/bin/python", "-m"]
    assert "--multihost" in args and "--config.total_steps=5" in args
    assert args[args.index("--config") + 1] == "experiments/configs/clip/b16.py"
    assert _flag_names(args[i + 1 :]) - {"config.total_steps", "kill-on-bad-exit"} <= (
        _train_flags()
    )


def test_slurm_script_without_config_says_what_to_set(fake_srun):
    result = subprocess.run(
        ["bash", os.path.join(LAUNCH, "slurm.sbatch")],
        env={**fake_srun, "WORKDIR": "/shared/w"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "set CONFIG=" in result.stderr
