"""Two JAX processes x 4 CPU devices on 127.0.0.1 (gloo collectives) train like one process
with 8 devices, each process reading half of every global batch."""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.training import checkpointing
from tests.experiments.conftest import TINY_SOURCE

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


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
    single = subprocess.run(
        _args(shapes_data_dir, one),
        cwd=ROOT,
        env=_env(8),
        check=True,
        capture_output=True,
        text=True,
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
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        logs.append(err)
    # Each process read its own half of the first global batch; together, the whole of it.
    whole = _first_batch(single.stderr)
    assert whole["process"] == (0, 1) and len(whole["indices"]) == 16
    halves = [_first_batch(log) for log in logs]
    assert [h["process"] for h in halves] == [(0, 2), (1, 2)]
    assert all(len(h["indices"]) == 8 for h in halves)
    assert not set(halves[0]["indices"]) & set(halves[1]["indices"])
    assert sorted(halves[0]["indices"] + halves[1]["indices"]) == sorted(whole["indices"])
    # Evaluation: each host decoded half of the 64 held-out examples (its devices' rows).
    for i, log in enumerate(logs):
        assert f"eval: process {i}/2 decodes 32 of 64 examples" in log, log[-3000:]
    assert "decodes" not in single.stderr  # one host reads everything, as before
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


def _first_batch(log: str) -> dict:
    """The trainer's log line about the first host batch: process, and its source indices."""
    m = re.search(r"process (\d+)/(\d+) read .*source indices \[([\d, ]*)\]", log)
    assert m, log[-3000:]
    return {
        "process": (int(m.group(1)), int(m.group(2))),
        "indices": [int(i) for i in m.group(3).split(",") if i.strip()],
    }
