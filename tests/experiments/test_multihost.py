"""Two JAX processes on 127.0.0.1 (gloo CPU collectives) train like one process."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import checkpointing

from .conftest import TINY_SOURCE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(data_dir, workdir):
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        "experiments/configs/clip/tiny.py",
        f"--workdir={workdir}",
        "--config.total_steps=3",
        "--config.optim.total_steps=3",
        "--config.optim.warmup_steps=1",
        "--config.batch_size=16",
        # A large Adam eps keeps parameters with zero true gradient (attention key bias) from
        # turning summation-order noise into full-size updates that differ between layouts.
        "--config.optim.eps=1e-3",
        "--config.checkpoint.every_steps=3",
        "--config.checkpoint.async_save=False",
        f"--config.data.data_dir={data_dir}",
        "--config.data.augment=False",
        f"--config.data.image_size={TINY_SOURCE['image_size']}",
        *[f"--config.data.source.{k}={v}" for k, v in TINY_SOURCE.items()],
        "--config.model.image.depth=1",
        "--config.model.text.depth=1",
        "--config.evals.zero_shot.batch_size=16",
        "--config.evals.retrieval.batch_size=16",
    ]


def _env(devices):
    return dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
    )


@pytest.mark.slow
def test_two_processes_match_one(shapes_data_dir, tmp_path):
    one = tmp_path / "one"
    subprocess.run(
        _args(shapes_data_dir, one),
        cwd=ROOT,
        env=_env(4),
        check=True,
        capture_output=True,
        timeout=900,
    )
    two = tmp_path / "two"
    port = _free_port()
    procs = [
        subprocess.Popen(
            _args(shapes_data_dir, two)
            + [
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    # Same global batch, same init, same data: the parameters agree.
    a, step_a = checkpointing.load_params(str(one))
    b, step_b = checkpointing.load_params(str(two))
    assert step_a == step_b == 3
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    # Evaluation saw every held-out example exactly once, on both layouts.
    ra = json.loads((one / "eval_results.json").read_text())["3"]
    rb = json.loads((two / "eval_results.json").read_text())["3"]
    assert ra["zero_shot"]["num_examples"] == rb["zero_shot"]["num_examples"] == 64
    assert ra["zero_shot"]["top1"] == pytest.approx(rb["zero_shot"]["top1"], abs=1 / 64)
