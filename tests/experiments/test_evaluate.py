"""`python -m experiments.evaluate --workdir`: results are labelled with the checkpoint's step."""

import json
import os
import subprocess
import sys

import pytest

from experiments.training import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_an_earlier_checkpoint_is_labelled_with_its_own_step(make_config, tmp_path):
    config = make_config(steps=4)  # checkpoints at steps 2 and 4
    config.evals = {
        "zero_shot": dict(
            type="zero_shot", every_steps=0, data="vlax_shapes", split="test", batch_size=16
        )
    }
    workdir, out = tmp_path / "run", tmp_path / "eval"
    trainer.train(config, str(workdir))
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}", "--step=2",
         f"--out={out}"],  # fmt: skip
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert list(results) == ["2"]  # the parameters of step 2, not config.total_steps (4)
    assert 0.0 <= results["2"]["zero_shot"]["top1"] <= 1.0
