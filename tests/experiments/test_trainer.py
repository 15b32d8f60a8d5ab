"""The generic trainer: sharded equivalence, exact resume, LiT freezing, NaN stop, bad input."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from etils import epath

from data import sources
from experiments import checkpointing, config_utils, inputs, sharding, trainer


def _run_steps(config, devices, batches):
    """Returns (losses, initial params, final params) of len(batches) trainer steps."""
    s = trainer.setup(config, devices=devices)
    state, losses = s.state, []
    init = jax.device_get(state["params"])  # before the donated steps consume the buffers
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        for local in batches:
            batch = sharding.to_global_batch(
                {k: v for k, v in local.items() if k != "index"}, s.mesh
            )
            state, metrics = s.step_fn(state, batch)
            losses.append(float(metrics["loss"]))
    return losses, init, jax.device_get(state["params"])


def _batches(config, n):
    data = inputs.Inputs(config.data, global_batch_size=config.batch_size, seed=config.seed)
    it = data.train_iterator()
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize(
    "mesh,loss",
    [
        ((("data", 2), ("fsdp", 4)), "softmax"),
        ((("fsdp", 8),), "sigmoid"),
        ((("data", 2), ("fsdp", 2), ("tensor", 2)), "softmax"),
    ],
)
def test_sharded_steps_match_single_device(make_config, mesh, loss):
    def config(mesh):
        c = make_config(loss=loss, mesh=mesh)
        # SGD, not Adam: Adam divides by sqrt(v), so for parameters whose true gradient is
        # zero (the attention key bias: softmax ignores a per-query constant) it turns
        # float rounding noise into full-size steps of arbitrary sign on any two layouts.
        c.optim = dict(name="sgd", lr=0.5, momentum=0.9, total_steps=3, grad_clip_norm=1.0)
        return c

    single = config((("data", 1),))
    batches = _batches(single, 3)
    ref_losses, init, ref_params = _run_steps(single, jax.devices()[:1], batches)
    losses, _, params = _run_steps(config(mesh), jax.devices(), batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_params)
    flat = jax.tree.leaves(params)
    assert len(flat) == len(flat_ref)
    for (path, want), got in zip(flat_ref, flat, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(path))
    # The parameters really changed over the 3 steps (the comparison is not vacuous).
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), init, ref_params)
    assert max(jax.tree.leaves(moved)) > 1e-4


def test_resume_continues_exactly(make_config, tmp_path):
    seen_straight, seen_resumed = [], []
    straight = make_config(steps=4)
    trainer.train(straight, str(tmp_path / "a"), on_batch=lambda s, b: seen_straight.append(b))

    first = make_config(steps=4)
    first.total_steps = 2  # "killed" after 2 steps; the schedule still spans 4
    trainer.train(first, str(tmp_path / "b"), on_batch=lambda s, b: seen_resumed.append(b))
    out = trainer.train(
        make_config(steps=4), str(tmp_path / "b"), on_batch=lambda s, b: seen_resumed.append(b)
    )

    assert [int(b["index"][0]) for b in seen_resumed] == [int(b["index"][0]) for b in seen_straight]
    for a, b in zip(seen_straight, seen_resumed, strict=True):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["image"], b["image"])
    straight_params, _ = checkpointing.load_params(str(tmp_path / "a"))
    resumed = jax.device_get(out["state"]["params"])
    for x, y in zip(jax.tree.leaves(straight_params), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(out["state"]["step"]) == 4


def test_lit_keeps_the_locked_tower_bit_identical(make_config, tmp_path):
    trainer.train(make_config(steps=2), str(tmp_path / "clip"))
    tower, _ = checkpointing.load_params(str(tmp_path / "clip"))
    lit = make_config(steps=3)
    lit.init = dict(checkpoint=str(tmp_path / "clip"), step=None, load=("img",))
    lit.optim.freeze = ("img/.*",)
    out = trainer.train(lit, str(tmp_path / "lit"))
    params = jax.device_get(out["state"]["params"])
    for x, y in zip(jax.tree.leaves(tower["img"]), jax.tree.leaves(params["img"]), strict=True):
        np.testing.assert_array_equal(x, y)
    changed = [
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(tower["txt"]), jax.tree.leaves(params["txt"]), strict=True)
    ]
    assert all(changed)


def test_nan_loss_stops_with_last_good_checkpoint(make_config, tmp_path, monkeypatch):
    real = sharding.to_global_batch

    def poison_step_4(batch, mesh):
        poison_step_4.calls += 1
        if poison_step_4.calls == 4:
            batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        return real(batch, mesh)

    poison_step_4.calls = 0
    monkeypatch.setattr(sharding, "to_global_batch", poison_step_4)
    config = make_config(steps=6)
    with pytest.raises(trainer.NonFiniteLossError, match="at step 4"):
        trainer.train(config, str(tmp_path))
    params, step = checkpointing.load_params(str(tmp_path))
    assert step == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_unknown_config_key_fails_before_compiling(make_config, tmp_path):
    config = make_config()
    config.totl_steps = 5
    with pytest.raises(config_utils.ConfigError, match="did you mean 'total_steps'"):
        trainer.train(config, str(tmp_path))


def test_indivisible_batch_size_is_a_clear_error(make_config, tmp_path):
    with pytest.raises(sharding.ShardingError, match="batch_size=12 cannot be split"):
        trainer.train(make_config(batch=12), str(tmp_path))


def test_missing_dataset_is_a_clear_error(make_config, tmp_path):
    config = make_config()
    config.data.name = "no_such_dataset"
    config.data.source = {}
    with pytest.raises(sources.DatasetNotFoundError, match="no_such_dataset"):
        trainer.train(config, str(tmp_path))


def test_workdir_of_another_model_is_refused(make_config, tmp_path):
    trainer.train(make_config(steps=2), str(tmp_path))
    other = make_config(steps=4)
    other.model.image.width = 48
    other.model.text.width = 48
    with pytest.raises(checkpointing.CheckpointMismatchError, match="another model"):
        trainer.train(other, str(tmp_path))


def test_results_json_is_replaced_atomically(tmp_path):
    path = epath.Path(tmp_path) / "eval_results.json"
    trainer._write_json_atomic(path, {"1": {"a": 1.0}})
    trainer._write_json_atomic(path, {"1": {"a": 1.0}, "2": {"a": 2.0}})
    assert json.loads(path.read_text()) == {"1": {"a": 1.0}, "2": {"a": 2.0}}
    assert sorted(p.name for p in epath.Path(tmp_path).iterdir()) == ["eval_results.json"]


def test_trains_on_a_users_csv_skipping_a_corrupt_image(make_config, tmp_path):
    from PIL import Image

    from data import shapes

    rng = np.random.default_rng(0)
    rows = ["image,caption"]
    for i in range(40):
        ex = shapes.render_example(rng, image_size=32)
        Image.fromarray(ex["image"]).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{ex['caption']}")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append("broken.png,a broken picture")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")

    config = make_config(steps=2)
    spec = f"user:{tmp_path / 'pairs.csv'}"
    config.data.name = spec
    config.data.train_split = "train[:90%]"
    config.data.source = dict(strict=False)
    config.data.tokenizer.model = str(tmp_path / "tok.model")
    config.evals = dict(
        retrieval=dict(type="retrieval", data=spec, split="train[90%:]", batch_size=8)
    )
    out = trainer.train(config, str(tmp_path / "run"))
    assert out["results"]["retrieval"]["num_examples"] == 4  # 40 readable pairs, last 10%

    config.data.source.strict = True
    with pytest.raises(ValueError, match="broken.png"):
        trainer.train(config, str(tmp_path / "strict"))
