"""training/eval_runner.py: a failed write of the eval results is reported, never fatal."""

import errno

import pytest

from experiments.training import checkpointing, eval_runner, run_meta, trainer


def test_a_failed_results_write_is_reported_and_training_goes_on(
    make_config, tmp_path, monkeypatch, caplog
):
    config = make_config(steps=4)
    config.evals = {
        "zero_shot": dict(
            type="zero_shot", every_steps=2, data="vlax_shapes", split="test", batch_size=16
        )
    }
    write = run_meta.write_json_atomic

    def disk_full_for_results(path, obj):
        if path.name == eval_runner.RESULTS_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, obj)

    monkeypatch.setattr(run_meta, "write_json_atomic", disk_full_for_results)
    with (
        caplog.at_level("INFO"),
        pytest.raises(eval_runner.EvaluationError, match=r"results not written.*No space left"),
    ):
        trainer.train(config, str(tmp_path))
    # The write at step 2 failed; training went on to the end and saved its checkpoint.
    assert checkpointing.latest_step(str(tmp_path)) == 4
    assert "eval zero_shot @2" in caplog.text and "eval zero_shot @4" in caplog.text
    assert not (tmp_path / eval_runner.RESULTS_FILE).exists()
