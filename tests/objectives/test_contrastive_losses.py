"""Contrastive losses: sharded fast paths against the dense references, forward and backward."""

import ast
import contextlib
import functools
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from objectives import contrastive_losses as cl
from objectives import contrastive_reference, softmax_ring

B, D = 16, 8
TOL = 1e-5
MESHES = {
    "data2_fsdp4": ((2, 4), ("data", "fsdp")),
    "fsdp8": ((8,), ("fsdp",)),
    "data8": ((8,), ("data",)),
    "data2_fsdp2_tensor2": ((2, 2, 2), ("data", "fsdp", "tensor")),
}


def make_mesh(shape, names):
    devices = np.array(jax.devices()).reshape(shape)
    return Mesh(devices, names, axis_types=(AxisType.Auto,) * len(names))


def normalise(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def embeddings(batch=B, dim=D, noise=0.8, seed=0):
    """Correlated pairs, so accuracies land strictly between 0 and 1 and differ by direction."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    zimg = normalise(jax.random.normal(k1, (batch, dim)))
    ztxt = normalise(zimg + noise * jax.random.normal(k2, (batch, dim)))
    return zimg, ztxt


def loss_args(kind):
    zimg, ztxt = embeddings()
    if kind == "softmax":
        return zimg, ztxt, jnp.float32(math.log(10.0)), None
    return zimg, ztxt, jnp.float32(math.log(10.0)), jnp.float32(-3.0)


def value_and_grads(kind, impl, zimg, ztxt, log_temp, bias, **kw):
    """(loss, metrics), grads w.r.t. zimg, ztxt, log_temp (and bias for sigmoid)."""

    def f(*params):
        return cl.contrastive_loss(kind, *params[:3], *params[3:] or [None], impl=impl, **kw)

    params = (zimg, ztxt, log_temp) + ((bias,) if kind == "sigmoid" else ())
    argnums = tuple(range(len(params)))
    return jax.value_and_grad(f, argnums=argnums, has_aux=True), params


def assert_matches(got, want, tol=TOL):
    (loss, metrics), grads = got
    (ref_loss, ref_metrics), ref_grads = want
    np.testing.assert_allclose(loss, ref_loss, atol=tol, rtol=tol)
    assert metrics.keys() == ref_metrics.keys()
    for name in ref_metrics:
        np.testing.assert_allclose(metrics[name], ref_metrics[name], atol=tol, err_msg=name)
    assert len(grads) == len(ref_grads)
    for g, ref in zip(grads, ref_grads, strict=True):
        assert g.shape == ref.shape
        np.testing.assert_allclose(g, ref, atol=tol, rtol=tol)


@functools.cache
def dense_reference(kind):
    fn, params = value_and_grads(kind, "dense", *loss_args(kind))
    return jax.jit(fn)(*params)


def test_fixture_is_informative():
    for kind in ("softmax", "sigmoid"):
        (loss, metrics), grads = dense_reference(kind)
        assert 0.0 < metrics["accuracy_i2t"] < 1.0
        assert 0.0 < metrics["accuracy_t2i"] < 1.0
        assert all(float(jnp.max(jnp.abs(g))) > 1e-3 for g in grads)


FAST_PATHS = [("softmax", "sharded"), ("softmax", "ring"), ("sigmoid", "sharded")]


@pytest.mark.parametrize("kind, impl", FAST_PATHS)
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_sharded_matches_dense_under_jit(kind, impl, mesh_name):
    """Mesh from context, inputs sharded over the batch axes (and D over "tensor" if present)."""
    mesh = make_mesh(*MESHES[mesh_name])
    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    dim_axis = "tensor" if "tensor" in mesh.axis_names else None
    emb_sharding = NamedSharding(mesh, P(batch_axes, dim_axis))
    fn, params = value_and_grads(kind, impl, *loss_args(kind))
    with jax.set_mesh(mesh):
        params = tuple(jax.device_put(p, emb_sharding) for p in params[:2]) + params[2:]
        got = jax.jit(fn)(*params)
    assert_matches(got, dense_reference(kind))


@pytest.mark.parametrize("kind, impl", FAST_PATHS)
def test_sharded_with_explicit_mesh(kind, impl):
    """No context mesh: the mesh argument alone drives the shard_map."""
    mesh = make_mesh(*MESHES["data2_fsdp4"])
    fn, params = value_and_grads(kind, impl, *loss_args(kind), mesh=mesh)
    assert_matches(jax.jit(fn)(*params), dense_reference(kind))


@pytest.mark.parametrize("kind, impl", FAST_PATHS)
def test_sharded_honours_custom_batch_axes(kind, impl):
    """Only the named batch axes form the ring; here "tensor" stands in as a batch axis."""
    mesh = make_mesh(*MESHES["data2_fsdp2_tensor2"])
    fn, params = value_and_grads(
        kind, impl, *loss_args(kind), mesh=mesh, batch_axes=("tensor", "fsdp")
    )
    assert_matches(jax.jit(fn)(*params), dense_reference(kind))


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
@pytest.mark.parametrize("mesh_spec", [None, ((1, 8), ("data", "tensor")), ((8,), ("data",))])
def test_falls_back_to_dense_only_without_batch_devices(kind, mesh_spec):
    """No mesh, or batch axes of one device: no shard_map traced, the dense numbers exactly."""
    zimg, ztxt, log_temp, bias = loss_args(kind)
    args = (kind, zimg, ztxt, log_temp, bias)
    sharded = jax.jit(functools.partial(cl.contrastive_loss, impl="sharded"), static_argnums=0)
    dense = jax.jit(functools.partial(cl.contrastive_loss, impl="dense"), static_argnums=0)
    mesh = make_mesh(*mesh_spec) if mesh_spec else None
    with jax.set_mesh(mesh) if mesh else contextlib.nullcontext():
        traced = str(jax.make_jaxpr(sharded, static_argnums=0)(*args))
        if mesh is not None and mesh.shape.get("data", 1) > 1:  # positive control
            assert "shard_map" in traced
            return
        got, want = sharded(*args), dense(*args)
    assert "shard_map" not in traced
    np.testing.assert_array_equal(got[0], want[0])
    for name in want[1]:
        np.testing.assert_array_equal(got[1][name], want[1][name])


@pytest.mark.parametrize("impl", ["dense", "sharded", "ring"])
def test_softmax_known_values(impl):
    mesh = make_mesh(*MESHES["data2_fsdp4"])
    loss = jax.jit(
        lambda zi, zt, lt: cl.contrastive_loss("softmax", zi, zt, lt, impl=impl, mesh=mesh)
    )
    # Aligned orthonormal pairs at the maximal temperature: every CE is log(1 + 7 e^-100) ~ 0.
    eye = jnp.eye(8)
    value, metrics = loss(eye, eye, jnp.float32(contrastive_reference.SOFTMAX_MAX_LOG_TEMP))
    assert float(value) < 1e-6
    assert float(metrics["accuracy_i2t"]) == 1.0 and float(metrics["accuracy_t2i"]) == 1.0
    # All embeddings identical: uniform logits, CE = log(B) at any temperature; argmax ties go
    # to the first index in both directions, so exactly one row hits (also under sharding).
    same = jnp.tile(normalise(jnp.arange(1.0, D + 1))[None], (B, 1))
    for log_temp in (0.0, 2.5):
        value, metrics = loss(same, same, jnp.float32(log_temp))
        np.testing.assert_allclose(value, math.log(B), rtol=1e-6)
        assert float(metrics["accuracy_i2t"]) == 1 / B and float(metrics["accuracy_t2i"]) == 1 / B


@pytest.mark.parametrize("impl", ["dense", "sharded"])
def test_sigmoid_known_values(impl):
    mesh = make_mesh(*MESHES["data8"])
    eye = jnp.eye(B)
    # Orthonormal pairs, scale 10, bias -5: positives have logit +5 and negatives -5, so each
    # of the B*B terms is log(1 + e^-5) and the loss (divided by B) is B * log(1 + e^-5).
    loss = jax.jit(lambda *a: cl.contrastive_loss("sigmoid", *a, impl=impl, mesh=mesh))
    value, metrics = loss(eye, eye, jnp.float32(math.log(10.0)), jnp.float32(-5.0))
    np.testing.assert_allclose(value, B * math.log1p(math.exp(-5.0)), rtol=1e-6)
    assert float(metrics["accuracy_i2t"]) == 1.0 and float(metrics["accuracy_t2i"]) == 1.0
    np.testing.assert_allclose(metrics["scale"], 10.0, rtol=1e-6)
    assert float(metrics["bias"]) == -5.0


@pytest.mark.parametrize("impl", ["dense", "sharded", "ring"])
def test_softmax_temperature_is_clamped_at_100(impl):
    mesh = make_mesh(*MESHES["fsdp8"])
    zimg, ztxt = embeddings()

    @jax.jit
    def loss(log_temp):
        return cl.contrastive_loss("softmax", zimg, ztxt, log_temp, impl=impl, mesh=mesh)

    grad = jax.jit(jax.grad(lambda lt: loss(lt)[0]))
    at_cap, above = (
        jnp.float32(contrastive_reference.SOFTMAX_MAX_LOG_TEMP),
        jnp.float32(math.log(1000.0)),
    )
    np.testing.assert_allclose(loss(above)[0], loss(at_cap)[0], rtol=1e-6)
    np.testing.assert_allclose(loss(above)[1]["scale"], 100.0, rtol=1e-5)
    assert float(grad(above)) == 0.0
    # Below the cap (e.g. at CLIP's init 1/0.07) the temperature learns.
    assert abs(float(grad(jnp.float32(math.log(1 / 0.07))))) > 1e-4


def test_errors_are_clear():
    zimg, ztxt, log_temp, bias = loss_args("sigmoid")
    with pytest.raises(ValueError, match="unknown contrastive loss kind 'cosine'"):
        cl.contrastive_loss("cosine", zimg, ztxt, log_temp)
    with pytest.raises(ValueError, match="unknown contrastive loss impl 'chunked'"):
        cl.contrastive_loss("sigmoid", zimg, ztxt, log_temp, bias, impl="chunked")
    with pytest.raises(ValueError, match="impl 'gathered' is softmax-only"):
        cl.contrastive_loss("sigmoid", zimg, ztxt, log_temp, bias, impl="gathered")
    with pytest.raises(ValueError, match="sigmoid contrastive loss needs a bias"):
        cl.contrastive_loss("sigmoid", zimg, ztxt, log_temp)
    with pytest.raises(ValueError, match="softmax contrastive loss takes no bias"):
        cl.contrastive_loss("softmax", zimg, ztxt, log_temp, bias)
    mesh = make_mesh(*MESHES["data8"])
    with pytest.raises(ValueError, match="global batch 12 is not divisible by the 8 devices"):
        cl.contrastive_loss("sigmoid", zimg[:12], ztxt[:12], log_temp, bias, mesh=mesh)


def _array_sizes(hlo_text):
    """Element counts of every array shape (e.g. f32[64,24]) in an HLO module's text."""
    shapes = set(re.findall(r"\b[a-z]+\d*\[([\d,]*)\]", hlo_text))
    return {shape: math.prod(int(d) for d in shape.split(",") if d) for shape in shapes}


def test_ring_never_holds_the_global_batch():
    """The compiled per-device program of loss+grad has no array larger than one [b, b] block.

    Autodiff straight through the ring loop would stack every visited text chunk and logit
    block ([n-1, b, D], [n-1, b, b]); the all-gather path holds [B, D] (the positive control).
    """
    batch, dim, n = 512, 24, 8
    b = batch // n
    mesh = make_mesh(*MESHES["data2_fsdp4"])
    emb = jax.ShapeDtypeStruct(
        (batch, dim), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp")))
    )
    scalar = jax.ShapeDtypeStruct((), jnp.float32)

    def compiled_sizes(loss_fn):
        grad = jax.grad(lambda *a: loss_fn(*a)[0], argnums=(0, 1, 2, 3))
        with jax.set_mesh(mesh):
            return _array_sizes(jax.jit(grad).lower(emb, emb, scalar, scalar).compile().as_text())

    ring = compiled_sizes(cl.sigmoid_loss_ring)
    assert max(ring.values()) <= b * b, ring
    softmax_ring_sizes = compiled_sizes(
        lambda zi, zt, lt, _: softmax_ring.softmax_loss_ring(zi, zt, lt)
    )
    assert max(softmax_ring_sizes.values()) <= b * b, softmax_ring_sizes
    gathered = compiled_sizes(lambda zi, zt, lt, _: cl.softmax_loss_gathered(zi, zt, lt))
    assert f"{batch},{dim}" in gathered


def test_loss_modules_import_one_way():
    """No import cycle among objectives/ (function-level imports included)."""
    root = pathlib.Path(__file__).resolve().parents[2] / "objectives"
    graph = {}
    for path in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "objectives":
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("objectives."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {
                    a.name.split(".")[1] for a in node.names if a.name.startswith("objectives.")
                }
        graph[path.stem] = deps
    assert {"contrastive_losses", "softmax_ring"} <= set(graph)
    assert "softmax_ring" in graph["contrastive_losses"]  # positive control: the edge is seen

    def reaches(start, goal, seen=()):
        return any(
            d == goal or (d not in seen and reaches(d, goal, (*seen, d)))
            for d in graph.get(start, ())
        )

    cycles = [name for name in graph if reaches(name, name)]
    assert not cycles, {name: graph[name] for name in cycles}
