"""Mesh construction, logical->mesh shardings and batch checks (8 host CPU devices)."""

import logging
import os
import pathlib
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import mesh_utils
from jax.sharding import PartitionSpec as P

from experiments.training import sharding

REPO = pathlib.Path(__file__).resolve().parents[3]


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


def test_make_mesh_on_cpu_keeps_device_order_and_says_so(caplog):
    with caplog.at_level(logging.INFO):
        mesh = sharding.make_mesh((("fsdp", -1),))
    assert list(mesh.devices.flat) == jax.devices()
    assert "CPU devices have no topology" in caplog.text


def _fake_devices(n, **attrs):
    return [types.SimpleNamespace(id=i, **{k: v(i) for k, v in attrs.items()}) for i in range(n)]


def test_make_mesh_does_not_hide_accelerator_topology_errors(monkeypatch):
    def no_fit(*args, **kwargs):
        raise ValueError("cannot tile (2, 4, 1) onto a 2x2x2 torus")

    # Both the current and the old API refuse: no silent reshape may take their place.
    monkeypatch.setattr(jax, "make_mesh", no_fit)
    monkeypatch.setattr(mesh_utils, "create_device_mesh", no_fit)
    tpus = _fake_devices(8, platform=lambda i: "tpu", device_kind=lambda i: "TPU v4")
    with pytest.raises(sharding.ShardingError, match=r"8 TPU v4 devices: cannot tile"):
        sharding.make_mesh((("data", 2), ("fsdp", 4)), devices=tpus)


def test_hybrid_mesh_puts_each_process_in_its_own_dcn_block():
    # Off TPU, processes (hosts) are the DCN units.
    devices = _fake_devices(
        8, platform=lambda i: "cpu", device_kind=lambda i: "cpu", process_index=lambda i: i // 4
    )
    grid = sharding.hybrid_device_grid((1, 4, 1), (2, 1, 1), devices[::-1])
    assert grid.shape == (2, 4, 1)
    assert [[d.process_index for d in row.flat] for row in grid] == [[0] * 4, [1] * 4]


def test_hybrid_mesh_errors_name_the_dcn_config():
    with pytest.raises(sharding.ShardingError, match=r"mesh_dcn .* needs 2 processes of 4"):
        sharding.make_mesh((("fsdp", -1),), dcn_axes=(("data", 2),))


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


def _boxed(shape, names):
    return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.float32), names)


def _tower_variables(num_kernels=1):
    """Boxed abstract params: 12 heads (no split over tensor=8), the rest divisible."""
    kernels = {
        f"block_{i}": _boxed((32, 12, 8), ("embed", "heads", "kv")) for i in range(num_kernels)
    }
    return {
        "encoder": kernels,
        "mlp": _boxed((32, 64), ("embed", "mlp")),
        "pos": _boxed((7, 32), ("length", "embed")),  # "length" maps to no mesh axis
        "scale": jax.ShapeDtypeStruct((32,), jnp.float32),  # unannotated: replicated
    }


def test_unsharded_report_names_dropped_axes_not_replicated_by_design():
    mesh = sharding.make_mesh((("tensor", 8),))
    dropped = sharding.unsharded_report(_tower_variables(), mesh, sharding.DEFAULT_RULES)
    assert dropped == [
        sharding.DroppedAxes(
            "encoder/block_0",
            (32, 12, 8),
            logical=P("embed", "heads", "kv"),
            wanted=P("fsdp", "tensor", None),
            kept=P("fsdp", None, None),
        )
    ]
    assert str(dropped[0]) == (
        "encoder/block_0 [32, 12, 8] P('embed', 'heads', 'kv'): "
        "wanted P('fsdp', 'tensor', None), kept P('fsdp', None, None)"
    )


def test_logical_shardings_warns_once_or_raises_under_strict(caplog):
    mesh = sharding.make_mesh((("tensor", 8),))
    variables = _tower_variables(num_kernels=25)
    with caplog.at_level(logging.WARNING):
        shardings = sharding.logical_shardings(variables, mesh, sharding.DEFAULT_RULES)
    assert shardings["encoder"]["block_0"].spec == P("fsdp", None, None)
    assert shardings["mlp"].spec == P("fsdp", "tensor")
    (record,) = caplog.records
    lines = record.getMessage().splitlines()
    assert lines[0].startswith("25 parameter(s) cannot be sharded")
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  ... and 5 more."
    assert all("wanted P('fsdp', 'tensor', None)" in line for line in lines[1:-1])

    with pytest.raises(sharding.ShardingError, match=r"(?s)encoder/block_0 .*config\.mesh.*rules"):
        sharding.logical_shardings(variables, mesh, sharding.DEFAULT_RULES, strict=True)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        quiet = sharding.logical_shardings(variables, mesh, sharding.DEFAULT_RULES, report=False)
    assert not caplog.records and quiet == shardings


def test_divisible_layout_is_silent_even_under_strict(caplog):
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))
    with caplog.at_level(logging.WARNING):
        sharding.logical_shardings(_tower_variables(), mesh, sharding.DEFAULT_RULES, strict=True)
    assert not caplog.records
    assert sharding.unsharded_report(_tower_variables(), mesh, sharding.DEFAULT_RULES) == []


def _attention(query_heads, kv_heads):
    attn = {
        "query": {"kernel": _boxed((32, query_heads, 8), ("embed", "heads", "kv"))},
        "key": {"kernel": _boxed((32, kv_heads, 8), ("embed", "heads", "kv"))},
        "out": {"kernel": _boxed((query_heads, 8, 32), ("heads", "kv", "embed"))},
    }
    return {"dec": {"block_0": {"attn": attn}}}


def test_tensor_size_that_cannot_split_query_heads_is_an_error():
    mesh = sharding.make_mesh((("fsdp", 2), ("tensor", 4)))
    with pytest.raises(
        sharding.ShardingError,
        match=r"(?s)query heads.*dec/block_0/attn/query/kernel: 6 heads, mesh axes "
        r"\{'tensor': 4\}.*divides every num_heads",
    ):
        sharding.logical_shardings(_attention(6, 6), mesh, sharding.DEFAULT_RULES)
    # Fewer key/value heads than the axis (multi-query attention) may stay replicated.
    shardings = sharding.logical_shardings(_attention(8, 1), mesh, sharding.DEFAULT_RULES)
    attn = shardings["dec"]["block_0"]["attn"]
    assert attn["query"]["kernel"].spec == P("fsdp", "tensor", None)
    assert attn["key"]["kernel"].spec == P("fsdp", None, None)
    # Heads mapped to no mesh axis: attention is replicated on purpose, no error.
    rules = tuple((k, None if k == "heads" else v) for k, v in sharding.DEFAULT_RULES)
    sharding.logical_shardings(_attention(6, 6), mesh, rules)


REMAT_WARNING = "Involuntary full rematerialization"
_COMPILE_STEP = """
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments.training import sharding, trainer
from tests.experiments.conftest import tiny_config

jax.config.update("jax_enable_compilation_cache", False)  # a cache hit skips the partitioner
mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))

# Control: rows looked up from an embed-sharded table into batch-sharded activations,
# the pattern XLA can only partition by full rematerialization.
table, rows = NamedSharding(mesh, P(None, "fsdp")), sharding.batch_sharding(mesh)
lookup = lambda t, ids: jax.lax.with_sharding_constraint(jnp.take(t, ids, axis=0), rows)
loss = lambda t, ids: jnp.sum(lookup(t, ids) ** 2)
jax.jit(jax.grad(loss), in_shardings=(table, rows), out_shardings=table).lower(
    jax.ShapeDtypeStruct((43, 32), jnp.float32), jax.ShapeDtypeStruct((16, 8), jnp.int32)
).compile()
print("=== train step ===", file=sys.stderr, flush=True)

s = trainer.setup(tiny_config(sys.argv[1], mesh=(("data", 2), ("fsdp", 4))))
with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in s.inputs.dummy_batch(16).items()}
    s.step_fn.lower(s.states.abstract, batch).compile()
print("compiled")
"""


def test_default_train_step_compiles_without_full_rematerialization(shapes_data_dir):
    # A subprocess: XLA logs from C++ to fd 2, and conftest's TF_CPP_MIN_LOG_LEVEL=3 would
    # silence its warnings here (the control below checks they do come through).
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="1", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_STEP, shapes_data_dir],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
    control, step = proc.stderr.split("=== train step ===")
    assert REMAT_WARNING in control
    remats = [line for line in step.splitlines() if REMAT_WARNING in line]
    assert not remats, "\n".join(remats)
