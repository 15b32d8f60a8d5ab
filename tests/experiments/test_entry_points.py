"""The command lines a researcher runs: train (with its summary) and benchmark."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import TINY_SOURCE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _tiny_overrides(data_dir):
    return [
        "--config.total_steps=2",
        "--config.optim.total_steps=2",
        "--config.optim.warmup_steps=1",
        "--config.batch_size=8",
        f"--config.data.data_dir={data_dir}",
        f"--config.data.image_size={TINY_SOURCE['image_size']}",
        *[f"--config.data.source.{k}={v}" for k, v in TINY_SOURCE.items()],
        "--config.model.image.depth=1",
        "--config.model.text.depth=1",
        "--config.evals.zero_shot.batch_size=32",
        "--config.evals.retrieval.batch_size=32",
    ]


@pytest.mark.slow
def test_train_cli_trains_evaluates_and_summarises(shapes_data_dir, tmp_path):
    workdir = tmp_path / "run"
    out = _run(
        [
            "experiments.train",
            "--config",
            "experiments/configs/clip/tiny.py",
            f"--workdir={workdir}",
            *_tiny_overrides(shapes_data_dir),
        ],
        tmp_path,
    )
    assert "zero_shot" in out and "retrieval" in out and "chance" in out
    results = json.loads((workdir / "eval_results.json").read_text())
    assert results["2"]["zero_shot"]["num_examples"] == TINY_SOURCE["test_size"]
    assert os.listdir(workdir / "checkpoints") == ["2"]  # the final step is always saved
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))


@pytest.mark.slow
def test_benchmark_cli_reports_figures(tmp_path):
    path = tmp_path / "bench.json"
    out = _run(
        [
            "experiments.benchmark",
            "--config",
            "experiments/configs/clip/b16.py:runlocal",
            "--steps=2",
            "--warmup=1",
            f"--json={path}",
        ],
        tmp_path,
    )
    figures = json.loads(path.read_text())
    assert json.loads(out) == figures
    for key in (
        "compile_s",
        "step_s",
        "examples_per_s",
        "tflops_per_device",
        "mfu",
        "step_memory_bytes_per_device",
        "host_peak_rss_bytes",
    ):
        assert figures[key] > 0, key
    assert figures["batch_size"] == 16 and figures["devices"] == 2


@pytest.mark.slow
def test_benchmark_times_decoding_with_and_without_the_cache(tmp_path):
    path = tmp_path / "decode.json"
    _run(
        [
            "experiments.benchmark",
            "--config",
            "experiments/configs/simvlm/base.py:runlocal",
            "--decode_only",
            "--new_tokens=4",
            "--decode_batch_sizes=1,2",
            f"--json={path}",
        ],
        tmp_path,
    )
    figures = json.loads(path.read_text())
    assert set(figures) == {"decoding"}  # --decode_only: no train step
    decoding = figures["decoding"]
    assert decoding["new_tokens"] == 4
    for path_ in ("cached", "uncached"):
        for b in (1, 2):
            assert decoding[f"{path_}_batch{b}_tokens_per_s"] > 0
            assert decoding[f"{path_}_batch{b}_prefill_s"] > 0
    for b in (1, 2):
        assert decoding[f"cache_speedup_batch{b}"] > 0


def test_benchmark_decode_only_needs_a_generative_objective(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.benchmark",
            "--config",
            "experiments/configs/clip/tiny.py",
            "--decode_only",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--decode_only: objective 'contrastive' does not generate" in proc.stderr
