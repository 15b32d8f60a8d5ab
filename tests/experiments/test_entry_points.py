"""The command lines a researcher runs: train (with its summary) and benchmark; every entry
point refuses stray positional arguments by name before it loads anything."""

import json
import os
import subprocess
import sys

import pytest

from experiments import sweep
from experiments.tools import gpu_check, loss_memory, peer_bench
from experiments.training import cli

from .conftest import TINY_SOURCE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _command(args, timeout=900):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run(args, tmp_path):
    proc = _command(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _tiny_overrides(data_dir):
    return [
        "--config.total_steps=2",
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


def test_benchmark_decode_only_needs_a_generative_objective():
    proc = _command(
        ["experiments.benchmark", "--config", "experiments/configs/clip/tiny.py", "--decode_only"],
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--decode_only: objective 'contrastive' does not generate" in proc.stderr


@pytest.mark.parametrize(
    "argv, spread",
    [
        (["p", "--images", "a", "b", "c"], ["p", "--images", "a", "--images=b", "--images=c"]),
        (["p", "--images=a", "b", "--step", "3"], ["p", "--images=a", "--images=b", "--step", "3"]),
        (["p", "-images", "a", "b"], ["p", "-images", "a", "--images=b"]),
        # words after another flag's value stay positional (run refuses them)
        (
            ["p", "--workdir", "w", "x", "--images", "a"],
            ["p", "--workdir", "w", "x", "--images", "a"],
        ),
        (["p", "--images", "a", "--", "b"], ["p", "--images", "a", "--", "b"]),
        (["p", "--images"], ["p", "--images"]),  # absl says it needs a value
    ],
)
def test_words_after_a_list_flag_are_its_values(argv, spread):
    assert cli.spread_list_flags(argv, {"images"}) == spread


@pytest.mark.parametrize(
    "module, flags",
    [
        ("experiments.train", ["--config=experiments/configs/clip/tiny.py", "--workdir={w}"]),
        ("experiments.evaluate", ["--workdir={w}"]),
        ("experiments.predict", ["--workdir={w}", "--images", "a.png", "--prompt", "a"]),
        ("experiments.benchmark", ["--config=experiments/configs/clip/tiny.py"]),
        ("experiments.export", ["--workdir={w}", "--format=hf", "--out={w}_out"]),
    ],
)
def test_absl_entry_points_refuse_stray_positional_arguments(module, flags, tmp_path):
    workdir = tmp_path / "run"  # does not exist: an error about it would come later
    argv = [module, *[f.format(w=workdir) for f in flags], "photo", "b.png"]
    proc = _command(argv, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "takes no positional arguments, got ['photo', 'b.png']" in proc.stderr
    assert "Traceback" not in proc.stderr and not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "main, flags",
    [
        (sweep.main, ["--config=experiments/configs/clip/tiny.py", "--workdir={w}", "--dry-run"]),
        (loss_memory.main, ["--batch=8", "--dim=4", "--devices=8"]),
        (peer_bench.main, ["--shape=s16", "--loss=clip", "--spec-json={{}}"]),
        (gpu_check.main, []),
    ],
)
def test_argparse_entry_points_refuse_stray_positional_arguments(main, flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*[f.format(w=tmp_path / "root") for f in flags], "b.png"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: b.png" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


PEERS = os.path.join(os.path.dirname(ROOT), "shared", "peers")  # the harness beside the repo


def _script(code_or_path, *args, cwd):
    """Runs a Python file (or `-c` code) with the repo on no path, from another directory."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *code_or_path, *args],
        cwd=cwd,
        env=dict(env, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_peer_bench_runs_as_a_script_from_any_directory(tmp_path):
    # run_all starts `python <repo>/experiments/tools/peer_bench.py ...` in the peers folder.
    proc = _script(
        [os.path.join(ROOT, "experiments", "tools", "peer_bench.py")], "--help", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--spec-json" in proc.stdout


@pytest.mark.skipif(not os.path.exists(os.path.join(PEERS, "shapes.py")), reason="no harness")
def test_peer_bench_counts_flops_with_the_harness_beside_the_repo(tmp_path):
    harness = _script(
        ["-c", f"import sys, json; sys.path.insert(0, {PEERS!r}); import shapes; "
         "spec = shapes.get_spec('s16'); "
         "print(json.dumps([spec, float(shapes.flops_per_step(spec)['total'])]))"],
        cwd=tmp_path,
    )  # fmt: skip
    assert harness.returncode == 0, harness.stderr[-3000:]
    spec, expected = json.loads(harness.stdout)
    # From a directory without shapes.py, with only the repo importable.
    found = _script(
        ["-c", f"import sys; sys.path.insert(0, {ROOT!r}); "
         f"from experiments.tools import peer_bench; print(peer_bench._harness_flops({spec!r}))"],
        cwd=tmp_path,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr[-3000:]
    assert float(found.stdout) == expected > 0
