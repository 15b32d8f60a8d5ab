"""The global norm equals optax's, reduces small leaves together and moves no sharded data."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.training import global_norm, optimizer, sharding

_SHAPES = {
    "a": (64, 32),
    "b": (64, 32),
    "c": (64, 32),
    "d": (16,),
    "e": (16,),
    "f": (3, 5),
    "g": (4, 2, 8),
    "h": (4, 2, 8),
}


def _tree(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {k: jnp.asarray(rng.normal(size=s).astype(dtype)) for k, s in _SHAPES.items()}


def _collectives(compiled_text):
    kinds = "all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter"
    return set(re.findall(rf"\b({kinds})\b", compiled_text))


def test_equals_optax_norm_in_float32_and_bfloat16():
    tree = _tree()
    np.testing.assert_allclose(global_norm.global_norm(tree), optax.tree.norm(tree), rtol=1e-6)
    mixed = {**tree, "a": tree["a"].astype(jnp.bfloat16), "d": tree["d"].astype(jnp.bfloat16)}
    # bf16 leaves are squared in f32: compare with the f32 norm of the same (rounded) values.
    as_f32 = jax.tree.map(lambda x: x.astype(jnp.float32), mixed)
    np.testing.assert_allclose(global_norm.global_norm(mixed), optax.tree.norm(as_f32), rtol=1e-6)
    assert float(global_norm.global_norm({})) == 0.0


def test_small_leaves_share_one_reduction_and_large_ones_are_not_copied():
    lowered = jax.jit(global_norm.global_norm).lower(_tree()).as_text()
    # All of _SHAPES is small: one reduction of the raveled vector, one sum of the partials.
    assert lowered.count("stablehlo.reduce(") == 2
    per_leaf = jax.jit(optax.tree.norm).lower(_tree()).as_text()
    assert per_leaf.count("stablehlo.reduce(") == len(_SHAPES)

    big = (global_norm.SMALL_LEAF_SIZE + 1,)
    tree = {**_tree(), "big1": jnp.ones(big), "big2": jnp.full(big, 2.0)}
    compiled = jax.jit(global_norm.global_norm).lower(tree).compile()
    np.testing.assert_allclose(compiled(tree), optax.tree.norm(tree), rtol=1e-6)
    # Large leaves are reduced where they lie: no temporary as large as one of them.
    assert compiled.memory_analysis().temp_size_in_bytes < 4 * big[0]


def test_layout_keeps_sharded_leaves_where_they_lie():
    mesh = sharding.make_mesh([("fsdp", 8)])
    rows, cols = NamedSharding(mesh, P("fsdp", None)), NamedSharding(mesh, P(None, "fsdp"))
    specs = {"a": rows, "b": rows, "c": cols}
    specs.update({k: NamedSharding(mesh, P()) for k in ("d", "e", "f", "g", "h")})
    tree = {k: jax.device_put(v, specs[k]) for k, v in _tree().items()}
    layout = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=specs[k]) for k, v in tree.items()}

    with_layout = jax.jit(lambda t: global_norm.global_norm(t, layout)).lower(tree).compile()
    # Only the partial sums cross devices; no sharded gradient is gathered or resharded.
    assert _collectives(with_layout.as_text()) == {"all-reduce"}
    np.testing.assert_allclose(with_layout(tree), optax.tree.norm(tree), rtol=1e-6)
    # Without it, the small sharded "a", "b", "c" are raveled into the shared vector with the
    # replicated leaves, which XLA can only do by moving sharded data.
    blind = jax.jit(global_norm.global_norm).lower(tree).compile()
    assert _collectives(blind.as_text()) - {"all-reduce"}
    np.testing.assert_allclose(blind(tree), optax.tree.norm(tree), rtol=1e-6)


def test_layout_must_describe_every_leaf():
    with pytest.raises(ValueError, match="layout has 1 leaves for 2 arrays"):
        global_norm.norm_of_leaves([jnp.ones(2), jnp.ones(3)], [None])


def test_trainable_norm_with_freeze_patterns_and_layout():
    grads = {"a": jnp.array([3.0, 4.0]), "frozen": {"w": jnp.array([100.0])}}
    layout = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), grads)
    for hint in (None, layout):
        np.testing.assert_allclose(
            optimizer.trainable_global_norm(grads, ("frozen/.*",), hint), 5.0, rtol=1e-6
        )
        np.testing.assert_allclose(
            optimizer.trainable_global_norm(grads, (), hint), np.sqrt(10025.0), rtol=1e-6
        )


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_matches_optax_above_and_below_the_limit(max_norm):
    updates = _tree()
    ours = global_norm.clip_by_global_norm(max_norm)
    ref = optax.clip_by_global_norm(max_norm)
    got, _ = ours.update(updates, ours.init(updates))
    want, _ = ref.update(updates, ref.init(updates))
    for k in updates:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
    if max_norm > float(optax.tree.norm(updates)):
        jax.tree.map(np.testing.assert_array_equal, got, updates)  # passed through exactly
    else:
        np.testing.assert_allclose(optax.tree.norm(got), max_norm, rtol=1e-5)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        global_norm.clip_by_global_norm(0.0)
