"""Tests for experiments/training/optimizer.py: schedules, weight decay mask, clipping, freezing."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from experiments.training import optimizer
from experiments.training.config_utils import ConfigError


def _config(**kwargs):
    base = dict(name="adamw", lr=0.1, total_steps=100)
    return ml_collections.ConfigDict({**base, **kwargs})


def _params():
    rng = np.random.default_rng(0)
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return {
        "img": {"Dense_0": {"kernel": f32(3, 4), "bias": f32(4)}, "pos_emb": f32(2, 4)},
        "txt": {"Dense_0": {"kernel": f32(4, 2), "bias": f32(2)}},
    }


def _step(tx, params, grads, state=None):
    """One optimizer step, jitted (one compile is faster than dispatching each op eagerly)."""

    @jax.jit
    def step(params, grads, state):
        state = tx.init(params) if state is None else state
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step(params, grads, state)


@pytest.mark.parametrize(
    "kind, end_factor, expected",
    [
        # steps:      0    5      10   60     110   200
        ("cosine", 0.0, [0.0, 0.05, 0.1, 0.05, 0.0, 0.0]),
        ("cosine", 0.1, [0.0, 0.05, 0.1, 0.055, 0.01, 0.01]),
        ("linear", 0.0, [0.0, 0.05, 0.1, 0.05, 0.0, 0.0]),
        ("constant", 0.0, [0.0, 0.05, 0.1, 0.1, 0.1, 0.1]),
    ],
)
def test_schedule_values(kind, end_factor, expected):
    config = _config(warmup_steps=10, total_steps=110, schedule=kind, end_lr_factor=end_factor)
    schedule = optimizer.make_schedule(config)
    got = jax.jit(schedule)(jnp.array([0, 5, 10, 60, 110, 200]))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    # A quarter into the cosine decay: lr * (1 + cos(pi/4)) / 2.
    if kind == "cosine" and end_factor == 0.0:
        np.testing.assert_allclose(float(schedule(35)), 0.05 * (1 + np.cos(np.pi / 4)), rtol=1e-6)


def test_schedule_errors():
    with pytest.raises(ConfigError, match="Unknown schedule 'cosin'"):
        optimizer.make_schedule(_config(schedule="cosin"))
    with pytest.raises(ConfigError, match="warmup_steps"):
        optimizer.make_schedule(_config(warmup_steps=200))


def test_schedule_without_warmup_starts_at_peak():
    schedule = optimizer.make_schedule(_config(schedule="cosine"))
    assert float(schedule(0)) == pytest.approx(0.1)


def test_adamw_weight_decay_only_where_not_excluded():
    params = _params()
    grads = jax.tree.map(lambda p: 0.5 * np.sign(p), params)
    lr, wd, eps = 0.1, 0.3, 1e-6
    tx, _ = optimizer.make_optimizer(
        _config(lr=lr, schedule="constant", weight_decay=wd, eps=eps), params
    )
    new, _ = _step(tx, params, grads)
    for path, p, g, n in zip(
        optimizer.param_paths(params),
        jax.tree.leaves(params),
        jax.tree.leaves(grads),
        jax.tree.leaves(new),
        strict=True,
    ):
        # First Adam step with bias correction: m_hat = g, v_hat = g^2.
        p, g = np.asarray(p), np.asarray(g)
        adam = g / (np.abs(g) + eps)
        decayed = not path.endswith(("bias", "pos_emb"))
        expected = p - lr * (adam + (wd * p if decayed else 0.0))
        np.testing.assert_allclose(n, expected, rtol=1e-6, atol=1e-6, err_msg=path)


def test_constant_schedule_scales_by_a_number():
    """A constant lr without warmup is a plain number to optax (no schedule count in the
    state, nothing to evaluate per step) and updates exactly like the scheduled form."""
    params = _params()
    grads = jax.tree.map(lambda p: 0.5 * np.sign(p) + 0.1 * p, params)
    constant, _ = optimizer.make_optimizer(_config(schedule="constant", weight_decay=0.1), params)
    scheduled, _ = optimizer.make_optimizer(
        _config(schedule="linear", end_lr_factor=1.0, weight_decay=0.1), params
    )
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    counts = lambda tx: [  # noqa: E731
        s for s in jax.tree.leaves(tx.init(params), is_leaf=is_schedule) if is_schedule(s)
    ]
    assert not counts(constant) and len(counts(scheduled)) == 1
    a, b = (params, None), (params, None)
    for _ in range(3):
        a, b = _step(constant, a[0], grads, a[1]), _step(scheduled, b[0], grads, b[1])
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a[0], b[0])
    # With a warmup the schedule stays a schedule.
    warm, _ = optimizer.make_optimizer(_config(schedule="constant", warmup_steps=5), params)
    assert len(counts(warm)) == 1


def test_sgd_weight_decay_and_custom_exclude():
    params = _params()
    grads = jax.tree.map(np.ones_like, params)
    config = _config(name="sgd", lr=0.5, schedule="constant", weight_decay=0.2, wd_exclude="^txt/")
    new, _ = _step(optimizer.make_optimizer(config, params)[0], params, grads)
    np.testing.assert_allclose(
        new["txt"]["Dense_0"]["kernel"], params["txt"]["Dense_0"]["kernel"] - 0.5
    )
    for p, n in zip(jax.tree.leaves(params["img"]), jax.tree.leaves(new["img"]), strict=True):
        np.testing.assert_allclose(n, p - 0.5 * (1 + 0.2 * np.asarray(p)), rtol=1e-6)


def test_sgd_momentum_accumulates():
    params = {"w": jnp.zeros(2)}
    grads = {"w": jnp.ones(2)}
    tx, _ = optimizer.make_optimizer(
        _config(name="sgd", lr=1.0, schedule="constant", momentum=0.9), params
    )
    p1, state = _step(tx, params, grads)
    p2, _ = _step(tx, p1, grads, state)
    np.testing.assert_allclose(p2["w"], -(1.0 + 1.9))


def test_clipping_uses_only_trainable_grads():
    params = {"a": jnp.zeros(2), "frozen": {"w": jnp.zeros(1)}}
    grads = {"a": jnp.array([3.0, 4.0]), "frozen": {"w": jnp.array([100.0])}}
    config = _config(name="sgd", lr=1.0, schedule="constant", grad_clip_norm=1.0)
    # Norm 5 over the trainable grads only: the update is g / 5.
    tx, _ = optimizer.make_optimizer(_config(**config, freeze=("frozen/.*",)), params)
    new, _ = _step(tx, params, grads)
    np.testing.assert_allclose(new["a"], [-0.6, -0.8], rtol=1e-6)
    np.testing.assert_array_equal(new["frozen"]["w"], [0.0])
    # Without freezing, the big grad dominates the norm.
    new, _ = _step(optimizer.make_optimizer(config, params)[0], params, grads)
    norm = np.sqrt(3**2 + 4**2 + 100**2)
    np.testing.assert_allclose(new["a"], [-3 / norm, -4 / norm], rtol=1e-6)
    np.testing.assert_allclose(
        optimizer.trainable_global_norm(grads, ("frozen/.*",)), 5.0, rtol=1e-6
    )


def test_no_clipping_when_off():
    params = {"a": jnp.zeros(2)}
    grads = {"a": jnp.array([3.0, 4.0])}
    for off in (None, 0):
        config = _config(name="sgd", lr=1.0, schedule="constant", grad_clip_norm=off)
        new, _ = _step(optimizer.make_optimizer(config, params)[0], params, grads)
        np.testing.assert_allclose(new["a"], [-3.0, -4.0])


def test_frozen_tower_bit_identical_after_training():
    params = _params()
    # A negative zero: p + 0.0 would flip its sign bit; the frozen update must not.
    params["img"]["Dense_0"]["bias"] = params["img"]["Dense_0"]["bias"].at[0].set(-0.0)
    config = _config(
        lr=0.05, warmup_steps=2, weight_decay=0.1, grad_clip_norm=1.0, freeze=("img/.*",)
    )
    tx, _ = optimizer.make_optimizer(config, params)

    def loss_fn(p, x):
        h = jnp.tanh(x @ p["img"]["Dense_0"]["kernel"] + p["img"]["Dense_0"]["bias"])
        h = h + p["img"]["pos_emb"].sum(0)
        return jnp.mean((h @ p["txt"]["Dense_0"]["kernel"] + p["txt"]["Dense_0"]["bias"]) ** 2)

    @jax.jit
    def train_step(p, state, x):
        grads = jax.grad(loss_fn)(p, x)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    state = tx.init(params)
    new = params
    for x in np.random.default_rng(1).normal(size=(5, 8, 3)).astype(np.float32):
        new, state = train_step(new, state, x)
    bits = lambda x: np.asarray(x).view(np.uint32)
    for before, after in zip(
        jax.tree.leaves(params["img"]), jax.tree.leaves(new["img"]), strict=True
    ):
        np.testing.assert_array_equal(bits(before), bits(after))
    for before, after in zip(
        jax.tree.leaves(params["txt"]), jax.tree.leaves(new["txt"]), strict=True
    ):
        assert np.abs(np.asarray(before) - np.asarray(after)).max() > 1e-4
    # Frozen parameters carry no Adam moments.
    adam_state = state.inner_states["trainable"].inner_state[1]
    assert isinstance(adam_state.mu["img"]["Dense_0"]["kernel"], optax.MaskedNode)
    assert adam_state.mu["txt"]["Dense_0"]["kernel"].shape == (4, 2)


def test_eval_shape_init_on_abstract_params():
    params = _params()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    config = _config(weight_decay=0.1, grad_clip_norm=1.0, freeze=("txt/.*",))
    tx, _ = optimizer.make_optimizer(config, abstract)
    abstract_state = jax.eval_shape(tx.init, abstract)
    real_state = tx.init(params)
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
    assert shapes(abstract_state) == shapes(real_state)


def test_boxed_params():
    params = {"img": {"kernel": nn.LogicallyPartitioned(jnp.ones((2, 3)), ("embed", "mlp"))}}
    params["txt"] = {"bias": jnp.ones(3)}
    assert optimizer.param_paths(params) == ["img/kernel", "txt/bias"]
    assert optimizer.frozen_mask(params, ("img/.*",)) == {
        "img": {"kernel": True},
        "txt": {"bias": False},
    }
    assert optimizer.parameter_counts(params, ("img/.*",)) == (9, 3)
    assert optimizer.parameter_counts(params) == (9, 9)
    tx, _ = optimizer.make_optimizer(
        _config(name="sgd", schedule="constant", freeze="img/kernel"), params
    )
    grads = jax.tree.map(jnp.ones_like, params)
    new, _ = _step(tx, params, grads)
    np.testing.assert_array_equal(nn.meta.unbox(new)["img"]["kernel"], 1.0)
    np.testing.assert_allclose(new["txt"]["bias"], 0.9)


def test_plain_dict_config_and_all_frozen():
    params = {"a": jnp.ones(2)}
    tx, schedule = optimizer.make_optimizer(
        dict(name="sgd", lr=0.1, total_steps=5, freeze=(".*",)), params
    )
    new, _ = _step(tx, params, {"a": jnp.ones(2)})
    np.testing.assert_array_equal(new["a"], 1.0)
    assert float(schedule(0)) == pytest.approx(0.1)


def test_parameter_counts_on_shape_dtype_structs():
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _params())
    total = 12 + 4 + 8 + 8 + 2
    assert optimizer.parameter_counts(abstract) == (total, total)
    assert optimizer.parameter_counts(abstract, ("img/.*",)) == (total, 8 + 2)


def test_unknown_optimizer_and_keys():
    params = _params()
    with pytest.raises(ConfigError, match="Unknown optimizer 'adam'"):
        optimizer.make_optimizer(_config(name="adam"), params)
    with pytest.raises(ConfigError, match="did you mean 'weight_decay'"):
        optimizer.make_optimizer(_config(weight_decy=0.1), params)
    with pytest.raises(ConfigError, match="optim.momentum"):  # An sgd field given to adamw.
        optimizer.make_optimizer(_config(momentum=0.9), params)
    with pytest.raises(ConfigError, match="total_steps"):
        optimizer.make_optimizer(ml_collections.ConfigDict(dict(name="sgd", lr=0.1)), params)


def test_freeze_regex_matching_nothing_is_an_error():
    params = _params()
    with pytest.raises(ConfigError, match=r"'image/\.\*' matches no parameter.*img/Dense_0/bias"):
        optimizer.make_optimizer(_config(freeze=("txt/.*", "image/.*")), params)
    # fullmatch: a bare prefix is not enough.
    with pytest.raises(ConfigError, match="'img' matches no parameter"):
        optimizer.make_optimizer(_config(freeze="img"), params)
    with pytest.raises(ConfigError, match="sequence of regex strings"):
        optimizer.make_optimizer(_config(freeze=(1,)), params)
