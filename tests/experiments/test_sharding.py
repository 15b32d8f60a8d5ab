"""Mesh construction, logical->mesh shardings and batch checks (8 host CPU devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments import sharding


def test_mesh_shape_fills_one_free_axis():
    assert sharding.mesh_shape((("data", -1), ("fsdp", 2)), 8) == {"data": 4, "fsdp": 2}
    assert sharding.mesh_shape((("fsdp", 8),), 8) == {"fsdp": 8}


@pytest.mark.parametrize(
    "axes, message",
    [
        ((("data", -1), ("fsdp", -1)), "at most one -1"),
        ((("data", 3),), "multiple of 3"),
        ((("data", 2), ("fsdp", 2)), "uses 4 devices but 8"),
        ((("model", -1),), "distinct names"),
        ((("data", 0),), "positive or -1"),
    ],
)
def test_mesh_shape_errors(axes, message):
    with pytest.raises(sharding.ShardingError, match=message):
        sharding.mesh_shape(axes, 8)


def test_make_mesh_has_all_axes_auto():
    mesh = sharding.make_mesh((("data", 2), ("fsdp", -1)))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_fit_spec_replicates_dims_an_axis_cannot_divide():
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))
    assert sharding._fit_spec((8, 6), P("fsdp", "data"), mesh) == P("fsdp", "data")
    assert sharding._fit_spec((6, 5), P("fsdp", "data"), mesh) == P(None, None)
    assert sharding._fit_spec((8,), P(("data", "fsdp")), mesh) == P(("data", "fsdp"))
    assert sharding._fit_spec((4,), P(("data", "fsdp")), mesh) == P("data")


def test_batch_size_check_names_the_axes():
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))
    sharding.check_batch_size(16, mesh)
    with pytest.raises(sharding.ShardingError, match=r"batch_size=12 .*'data': 2, 'fsdp': 4"):
        sharding.check_batch_size(12, mesh)


def test_global_batch_is_split_over_batch_axes():
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))
    local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    out = sharding.to_global_batch(local, mesh)["x"]
    assert out.shape == (16, 3) and out.sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape for s in out.addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(np.asarray(out), local["x"])
