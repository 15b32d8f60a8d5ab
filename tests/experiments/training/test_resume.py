"""Resuming and self-describing runs: exact resume, refused and allowed config changes (all
checked before anything compiles), a kill between async checkpoints, rebuilding from a workdir."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import objectives
from experiments.training import checkpointing, eval_runner, run_meta, train_state, trainer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _refuse_build(*args, **kwargs):
    raise AssertionError("a train state was built (and compiled) before the check")


def test_resume_continues_exactly(make_config, tmp_path):
    seen_straight, seen_resumed = [], []
    trainer.train(
        make_config(steps=4), str(tmp_path / "a"), on_batch=lambda s, b: seen_straight.append(b)
    )

    def killed_at_step_3(step, batch):
        if step == 3:  # the checkpoint of step 2 is written; steps 3 and 4 are lost
            raise KeyboardInterrupt("killed")
        seen_resumed.append(batch)

    with pytest.raises(KeyboardInterrupt, match="killed"):
        trainer.train(make_config(steps=4), str(tmp_path / "b"), on_batch=killed_at_step_3)
    out = trainer.train(
        make_config(steps=4), str(tmp_path / "b"), on_batch=lambda s, b: seen_resumed.append(b)
    )
    for a, b in zip(seen_straight, seen_resumed, strict=True):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["image"], b["image"])
    straight_params, _ = checkpointing.load_params(str(tmp_path / "a"))
    _assert_same_params(straight_params, jax.device_get(out["state"]["params"]))
    assert int(out["state"]["step"]) == 4
    launches = (tmp_path / "b" / run_meta.LAUNCHES_FILE).read_text().splitlines()
    assert [json.loads(line)["start_step"] for line in launches] == [0, 2]


def test_resume_restores_without_building_a_fresh_init(make_config, tmp_path, monkeypatch):
    trainer.train(make_config(steps=2), str(tmp_path))

    def refuse(self, seed):
        raise AssertionError("a fresh state was initialised for a resumed run")

    monkeypatch.setattr(train_state.StateBuilder, "fresh", refuse)
    out = trainer.train(make_config(steps=3), str(tmp_path))
    assert int(out["state"]["step"]) == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(batch_size=32), r"batch_size: checkpoint 16 -> now 32"),
        (lambda c: c.update(seed=5), r"seed: checkpoint 0 -> now 5"),
        (lambda c: c.data.update(augment=True), r"data.augment: checkpoint False -> now True"),
    ],
)
def test_resume_with_a_meaningful_change_is_refused_before_compiling(
    make_config, tmp_path, monkeypatch, change, message
):
    trainer.train(make_config(steps=2), str(tmp_path))
    other = make_config(steps=4)
    change(other)
    monkeypatch.setattr(train_state.StateBuilder, "__init__", _refuse_build)
    with pytest.raises(run_meta.ResumeConfigError, match=message):
        trainer.train(other, str(tmp_path))


def test_workdir_of_another_model_is_refused_before_compiling(make_config, tmp_path, monkeypatch):
    trainer.train(make_config(steps=2), str(tmp_path))
    other = make_config(steps=4)
    other.model.image.width = 48
    other.model.text.width = 48
    monkeypatch.setattr(train_state.StateBuilder, "__init__", _refuse_build)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="another model"):
        trainer.train(other, str(tmp_path))


def test_harmless_changes_resume_and_are_logged(make_config, tmp_path, caplog):
    trainer.train(make_config(steps=2), str(tmp_path))
    longer = make_config(steps=3)
    longer.log_every_steps = 7
    with caplog.at_level("INFO"):
        out = trainer.train(longer, str(tmp_path))
    assert int(out["state"]["step"]) == 3
    assert "changed config field total_steps: 2 -> 3" in caplog.text
    assert "log_every_steps: 1 -> 7" in caplog.text


def test_a_resume_past_total_steps_is_labelled_with_the_checkpoint_step(make_config, tmp_path):
    config = make_config(steps=4)
    config.evals = {
        "zero_shot": dict(
            type="zero_shot", every_steps=0, data="vlax_shapes", split="test", batch_size=16
        )
    }
    trainer.train(config, str(tmp_path))
    shorter = make_config(steps=2)  # the checkpoint (step 4) is already past it
    shorter.evals = config.evals
    out = trainer.train(shorter, str(tmp_path))
    assert int(out["state"]["step"]) == 4
    history = json.loads((tmp_path / eval_runner.RESULTS_FILE).read_text())
    assert sorted(history, key=int) == ["4"]  # never "2": those are step-4 parameters
    launches = (tmp_path / run_meta.LAUNCHES_FILE).read_text().splitlines()
    assert [json.loads(line)["start_step"] for line in launches] == [0, 4]


def test_a_workdir_alone_rebuilds_the_model(make_config, tmp_path):
    config = make_config(steps=2)
    out = trainer.train(config, str(tmp_path))
    saved = run_meta.load_run_config(str(tmp_path))
    # The resolved config: what was given, with the schedule's length filled in.
    expected = run_meta.to_jsonable(config)
    expected["optim"]["total_steps"] = 2
    assert run_meta.to_jsonable(saved) == expected
    meta, step = checkpointing.read_meta(str(tmp_path))
    assert step == 2 and meta["tokenizer"]["sha256"] and meta["data"]["max_len"] == 8
    model = objectives.get_objective(meta["objective"])(**meta["model_config"])
    params, _ = checkpointing.load_params(str(tmp_path))
    s = out["setup"]
    batch = s.inputs.dummy_batch(4)
    batch["tokens"] = np.tile(np.arange(4, 12, dtype=np.int32), (4, 1))
    rebuilt = model.apply({"params": params}, batch["tokens"], method="embed_text")
    trained = s.model.apply(
        {"params": jax.device_get(out["state"]["params"])}, batch["tokens"], method="embed_text"
    )
    np.testing.assert_allclose(rebuilt, trained, rtol=1e-6, atol=1e-6)


_KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tests.experiments.conftest import tiny_config
    from experiments.training import trainer

    config = tiny_config({data_dir!r}, steps=6)
    config.checkpoint.update(every_steps=2, async_save=True)

    def kill_at_5(step, batch):
        if step == 5:  # between the checkpoints of steps 4 and 6, an async save maybe in flight
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.train(config, {workdir!r}, on_batch=kill_at_5)
    """
)


@pytest.mark.slow
def test_resume_after_a_kill_between_async_checkpoints(make_config, shapes_data_dir, tmp_path):
    workdir = str(tmp_path / "killed")
    script = _KILLED_RUN.format(root=ROOT, data_dir=shapes_data_dir, workdir=workdir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert checkpointing.latest_step(workdir) in (2, 4)

    config = make_config(steps=6)
    config.checkpoint.update(every_steps=2, async_save=True)
    resumed = trainer.train(config, workdir)
    straight = trainer.train(config, str(tmp_path / "straight"))
    _assert_same_params(
        jax.device_get(straight["state"]["params"]), jax.device_get(resumed["state"]["params"])
    )
