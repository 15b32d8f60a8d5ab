"""The generic trainer: sharded equivalence with AdamW, LiT freezing, NaN stop, user data."""

import re

import jax
import numpy as np
import pytest

from experiments.training import checkpointing, sharding, trainer
from tests.experiments.training.trainer_steps import key_path as _path
from tests.experiments.training.trainer_steps import run_steps as _run_steps
from tests.experiments.training.trainer_steps import train_batches as _batches

# The attention key bias adds a per-query constant to the logits, which softmax ignores: its
# true gradient is zero, so Adam (dividing by sqrt(v)) turns float summation noise into
# full-size steps of arbitrary sign that no two layouts share. It has no effect on any output,
# so it is left out of the parameter comparison (it is still trained and saved; the HF layouts
# carry it, so it is not dropped from the model).
NO_EFFECT = re.compile(r".*/attn/key/bias$")


MESHES = {
    "dp2_fsdp4": (("data", 2), ("fsdp", 4)),
    "fsdp8": (("fsdp", 8),),
    "dp2_fsdp2_tp2": (("data", 2), ("fsdp", 2), ("tensor", 2)),
}
# (fsdp, tensor) split of the MLP's fc1 kernel [embed=32, mlp=64] under DEFAULT_RULES.
FC1_SPLIT = {"dp2_fsdp4": (4, 1), "fsdp8": (8, 1), "dp2_fsdp2_tp2": (2, 2)}


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
@pytest.mark.parametrize("mesh", list(MESHES))
def test_sharded_adamw_steps_match_single_device(make_config, mesh, loss):
    single = make_config(loss=loss, mesh=(("data", 1),))  # the configured AdamW
    batches = _batches(single, 3)
    ref_losses, init, ref_params, _ = _run_steps(single, jax.devices()[:1], batches)
    losses, _, params, state = _run_steps(
        make_config(loss=loss, mesh=MESHES[mesh]), jax.devices(), batches
    )
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    compared = 0
    for (key, want), got in zip(
        jax.tree_util.tree_leaves_with_path(ref_params), jax.tree.leaves(params), strict=True
    ):
        if NO_EFFECT.match(_path(key)):
            continue
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=_path(key))
        compared += 1
    assert compared > 20
    # The parameters really changed over the 3 steps (the comparison is not vacuous).
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), init, ref_params)
    assert max(jax.tree.leaves(moved)) > 1e-4
    # ... and really are sharded as the rules say: embed over fsdp, mlp over tensor.
    fc1 = state["params"]["img"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    fsdp, tensor = FC1_SPLIT[mesh]
    assert {s.data.shape for s in fc1.addressable_shards} == {(32 // fsdp, 64 // tensor)}
    mu = jax.tree.leaves(state["opt_state"])  # Adam moments follow their parameters
    assert any(getattr(x, "sharding", None) == fc1.sharding for x in mu)


# Each preset's mesh, and the per-device shard of the fc1 kernel [embed=32, mlp=64] on it.
PRESET_MESHES = {
    "dp": ((("data", 2), ("fsdp", 4)), (32, 64)),
    "fsdp": ((("data", 2), ("fsdp", 4)), (8, 64)),
    "fsdp_tp": ((("data", 2), ("fsdp", 2), ("tensor", 2)), (16, 32)),
}


@pytest.mark.parametrize("preset", list(PRESET_MESHES))
def test_parallelism_presets_match_single_device(make_config, preset):
    mesh, fc1_shard = PRESET_MESHES[preset]
    single = make_config(mesh=(("data", 1),))
    batches = _batches(single, 3)
    ref_losses, _, ref_params, _ = _run_steps(single, jax.devices()[:1], batches)
    config = make_config(mesh=mesh)
    config.parallelism = preset
    losses, _, params, state = _run_steps(config, jax.devices(), batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    for (key, want), got in zip(
        jax.tree_util.tree_leaves_with_path(ref_params), jax.tree.leaves(params), strict=True
    ):
        if not NO_EFFECT.match(_path(key)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=_path(key))
    fc1 = state["params"]["img"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert {s.data.shape for s in fc1.addressable_shards} == {fc1_shard}


def test_presets_name_their_mistakes(make_config):
    config = make_config(mesh=(("data", 2), ("fsdp", 2), ("tensor", 2)))
    config.parallelism = "fsdp"  # no tensor parallelism: the tensor axis would sit idle
    with pytest.raises(sharding.ShardingError, match=r"uses no mesh axis \['tensor'\]"):
        trainer.setup(config)
    config.parallelism = "zero3"
    with pytest.raises(sharding.ShardingError, match=r"Unknown config.parallelism 'zero3'"):
        trainer.setup(config)


def test_lit_keeps_the_locked_tower_bit_identical(make_config, tmp_path):
    trainer.train(make_config(steps=2), str(tmp_path / "clip"))
    tower, _ = checkpointing.load_params(str(tmp_path / "clip"))
    lit = make_config(steps=3, mesh=(("data", 2), ("fsdp", 4)))
    lit.init = dict(checkpoint=str(tmp_path / "clip"), step=None, load=("img",))
    lit.optim.freeze = ("img/.*",)
    out = trainer.train(lit, str(tmp_path / "lit"))
    params = out["state"]["params"]
    # Loaded straight into the model's shardings (embed over fsdp=4).
    fc1 = params["img"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert {s.data.shape for s in fc1.addressable_shards} == {(8, 64)}
    params = jax.device_get(params)
    for x, y in zip(jax.tree.leaves(tower["img"]), jax.tree.leaves(params["img"]), strict=True):
        np.testing.assert_array_equal(x, y)
    changed = [
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(tower["txt"]), jax.tree.leaves(params["txt"]), strict=True)
    ]
    assert all(changed)


def _poison(monkeypatch, at_call):
    real = sharding.to_global_batch
    calls = []

    def poisoned(batch, mesh):
        calls.append(1)
        if len(calls) == at_call:
            batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        return real(batch, mesh)

    monkeypatch.setattr(sharding, "to_global_batch", poisoned)


def test_nan_loss_stops_with_last_good_checkpoint(make_config, tmp_path, monkeypatch):
    _poison(monkeypatch, at_call=4)
    with pytest.raises(trainer.NonFiniteLossError, match="at step 4"):
        trainer.train(make_config(steps=6), str(tmp_path))
    params, step = checkpointing.load_params(str(tmp_path))
    assert step == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_nan_is_caught_one_step_behind_between_logs(make_config, tmp_path, monkeypatch):
    # Logging every 100 steps: step 3's NaN is only seen by the check one step behind, when
    # step 4 has been dispatched; step 4's checkpoint must never be written.
    _poison(monkeypatch, at_call=3)
    config = make_config(steps=6)
    config.log_every_steps = 100
    config.checkpoint.every_steps = 4
    with pytest.raises(trainer.NonFiniteLossError, match="at step 3.*none \\(no checkpoint"):
        trainer.train(config, str(tmp_path))
    assert checkpointing.latest_step(str(tmp_path)) is None


def test_trains_on_a_users_csv_skipping_a_corrupt_image(make_config, tmp_path):
    from PIL import Image

    from data import shapes

    rng = np.random.default_rng(0)
    rows = ["image,caption,split"]
    for i in range(40):
        ex = shapes.render_example(rng, image_size=32)
        Image.fromarray(ex["image"]).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{ex['caption']},{'test' if i % 10 == 0 else 'train'}")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append("broken.png,a broken picture,train")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")

    config = make_config(steps=2)
    spec = f"user:{tmp_path / 'pairs.csv'}"
    config.data.name = spec
    config.data.source = dict(strict=False)
    config.data.tokenizer.model = str(tmp_path / "tok.model")
    config.evals = dict(retrieval=dict(type="retrieval", data=spec, split="test", batch_size=8))
    out = trainer.train(config, str(tmp_path / "run"))
    assert out["results"]["retrieval"]["num_examples"] == 4  # the rows marked "test"

    config.data.source.strict = True
    config.total_steps = config.optim.total_steps = 3  # 48 rows: every train row is read
    with pytest.raises(ValueError, match="broken.png"):
        trainer.train(config, str(tmp_path / "strict"))


def test_logs_the_time_spent_waiting_for_data(make_config, tmp_path, monkeypatch):
    """A pipeline slower than the step shows up as data wait, per step and as a fraction."""
    import time

    from clu import metric_writers

    from experiments.training import inputs

    delay = 0.2
    make_iterator = inputs.Inputs.train_iterator

    def slow_iterator(self):
        it = make_iterator(self)

        class Slow:
            def __next__(self):
                time.sleep(delay)
                return next(it)

            def __getattr__(self, name):  # get_state / set_state
                return getattr(it, name)

        return Slow()

    logged = []
    create = metric_writers.create_default_writer

    def recording_writer(*args, **kwargs):
        writer = create(*args, **kwargs)
        write = writer.write_scalars
        writer.write_scalars = lambda step, scalars: (
            logged.append((step, scalars)),
            write(step, scalars),
        )[1]
        return writer

    monkeypatch.setattr(inputs.Inputs, "train_iterator", slow_iterator)
    monkeypatch.setattr(metric_writers, "create_default_writer", recording_writer)
    config = make_config(steps=5)
    config.log_every_steps = 2
    trainer.train(config, str(tmp_path))
    waits = [(step, m) for step, m in logged if "data_wait_s" in m]
    assert [step for step, _ in waits] == [2, 4, 5]  # every log after the first step's
    for _, m in waits:
        assert delay <= m["data_wait_s"] < delay + 1.0, m
        assert 0.0 < m["data_wait_fraction"] <= 1.0
        assert m["data_wait_s"] <= m["step_time_s"] + 1e-6, m
