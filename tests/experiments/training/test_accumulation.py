"""Gradient accumulation: k micro-batches give the gradient of the whole batch, exactly,
for contrastive losses whose negatives span the batch."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments.training import accumulation, config_utils, trainer
from tests.experiments.training.trainer_steps import global_batch
from tests.experiments.training.trainer_steps import key_path as _path
from tests.experiments.training.trainer_steps import run_steps as _run_steps
from tests.experiments.training.trainer_steps import train_batches as _batches

MESH = (("data", 2), ("fsdp", 4))


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_microbatches_give_the_whole_batch_gradient(make_config, loss):
    config = make_config(loss=loss, batch=32, mesh=MESH)
    s = trainer.setup(config)
    params = s.fresh_state()["params"]
    (local,) = _batches(config, 1)
    rng = jax.random.key(0)
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        batch = global_batch(s, local)

        def plain(p):
            return s.model.apply({"params": p}, batch, train=True, rngs={"dropout": rng})

        (want_loss, want_metrics), want = jax.jit(jax.value_and_grad(plain, has_aux=True))(params)
        for k in (2, 4):  # micro-batches of 16 and 8 examples (2 and 1 per device)
            fn = jax.jit(lambda p, b, k=k: accumulation.loss_and_grads(s.model, p, b, k, rng))
            (got_loss, got_metrics), got = fn(params, batch)
            np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6, atol=1e-6)
            for name in want_metrics:
                # Duplicate captions tie, and the first argmax among ties depends on the
                # batch order (micro-major here), so a hit or two may move.
                tol = 2 / 32 if name.startswith("accuracy") else 1e-6
                np.testing.assert_allclose(got_metrics[name], want_metrics[name], atol=tol)
            for (key, w), g in zip(
                jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), strict=True
            ):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=f"{k}: {_path(key)}")
    # Not vacuous: averaging the micro-batches' own gradients (fewer negatives) differs.
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        half = jax.tree.map(lambda x: x[::2], batch)
        own = jax.jit(jax.grad(lambda p: s.model.apply({"params": p}, half, train=True)[0]))
        gap = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), own(params), want)
    assert max(jax.tree.leaves(gap)) > 1e-3


def test_trainer_steps_with_microbatches_match_the_whole_batch(make_config):
    whole = make_config(batch=32, mesh=MESH)
    batches = _batches(whole, 3)
    ref_losses, _, ref_params, _ = _run_steps(whole, jax.devices(), batches)
    micro = make_config(batch=32, mesh=MESH)
    micro.microbatches = 4
    losses, _, params, _ = _run_steps(micro, jax.devices(), batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    for (key, want), got in zip(
        jax.tree_util.tree_leaves_with_path(ref_params), jax.tree.leaves(params), strict=True
    ):
        if not _path(key).endswith("attn/key/bias"):  # see test_trainer.NO_EFFECT
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=_path(key))


@pytest.mark.parametrize(
    "count, message",
    [
        (3, "microbatches=3 does not divide config.batch_size=32"),
        (8, "micro-batches of 4 examples do not split over the 8 batch devices"),
        (0, "must be an integer >= 1"),
    ],
)
def test_bad_counts_fail_before_compile(make_config, monkeypatch, count, message):
    config = make_config(batch=32, mesh=MESH)
    config.microbatches = count
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the check"))
    with pytest.raises(config_utils.ConfigError, match=message):
        trainer.setup(config)


def test_an_objective_without_the_split_is_refused():
    class Plain(nn.Module):
        def __call__(self, batch, *, train=False):
            return 0.0, {}

    with pytest.raises(ValueError, match="Plain does not split into"):
        accumulation.check(Plain(), 2, 32, 8)
    accumulation.check(Plain(), 1, 32, 8)  # no accumulation: nothing to split
