"""The train state {"step", "params", "opt_state"}: abstract first, materialised only if needed.

`abstract_state` costs no device memory and compiles nothing but the optimizer's init: it
gives shapes and shardings for the resume checks, for orbax to restore straight into, and
for the jitted step. A fresh run then materialises the state directly sharded
(`jax.jit(init, out_shardings=...)`); a resumed run never builds a fresh init at all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.training import checkpointing, run_meta, sharding
from experiments.training.config_utils import ConfigError


def _boxed_init(model: nn.Module, dummy_batch: Mapping, rng: jax.Array):
    variables = model.init({"params": rng, "dropout": rng}, dummy_batch, train=False)
    return variables["params"]


def _with_shardings(abstract, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def boxed_abstract_params(model, dummy_batch):
    """The params' shapes with their logical axes (nn.LogicallyPartitioned); nothing runs."""
    return jax.eval_shape(lambda r: _boxed_init(model, dummy_batch, r), jax.random.key(0))


def with_mesh_shardings(boxed, mesh, rules, *, strict: bool = False, report: bool = True):
    """Unboxed ShapeDtypeStructs carrying the mesh sharding their logical axes map to."""
    shardings = sharding.logical_shardings(boxed, mesh, rules, strict=strict, report=report)
    return _with_shardings(sharding.strip_boxes(boxed), shardings)


def _state_like_params(boxed_state, mesh, rules):
    """Abstract optimizer state whose boxed (param-shaped) leaves get their parameter's
    sharding; everything else (step counts) is replicated. Frozen parameters have only an
    optax MaskedNode (no array) in their place."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731

    def leaf(x):
        if is_box(x) and not hasattr(x.value, "shape"):
            return x.value  # a frozen parameter's placeholder inside its box
        if is_box(x):
            only = sharding.logical_shardings(x, mesh, rules, report=False)
            return jax.ShapeDtypeStruct(x.value.shape, x.value.dtype, sharding=only)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh))

    return jax.tree.map(leaf, boxed_state, is_leaf=is_box)


def shardings_of(abstract):
    return jax.tree.map(lambda a: a.sharding, abstract)


class StateBuilder:
    """Abstract state for checks and restores; `fresh()` materialises a new one."""

    def __init__(self, model, dummy_batch, boxed_params, params, tx, mesh, rules, init_spec=None):
        """`init_spec`: a run_spec.InitSpec whose towers a fresh state loads (None: none)."""
        self.model, self.dummy_batch, self.mesh = model, dummy_batch, mesh
        self.params = params  # abstract, with shardings
        # optax builds its state with tree maps over the params, so the logical boxes carry
        # over: Adam's moments get their parameter's sharding (FSDP shards them too), the
        # step counts are replicated.
        opt = _state_like_params(jax.eval_shape(tx.init, boxed_params), mesh, rules)
        self._opt_init = jax.jit(tx.init, out_shardings=shardings_of(opt))
        step = jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh))
        self.abstract = {"step": step, "params": params, "opt_state": opt}
        self.init_spec = init_spec
        self.init_source = check_init_towers(init_spec, params) if init_spec else None

    @property
    def shardings(self):
        return shardings_of(self.abstract)

    def fresh(self, seed: int) -> dict[str, Any]:
        """A new sharded state: initialised params (+ towers loaded from `config.init`)."""
        params = jax.jit(
            lambda r: nn.unbox(_boxed_init(self.model, self.dummy_batch, r)),
            out_shardings=shardings_of(self.params),
        )(jax.random.key(seed))
        if self.init_spec:
            params = load_init_towers(params, self.init_spec, self.params, self.init_source)
        return {
            "step": jax.device_put(jnp.zeros((), jnp.int32), self.abstract["step"].sharding),
            "params": params,
            "opt_state": self._opt_init(params),
        }


class PretrainedTowers:
    """`config.init.hf`: towers of a transformers checkpoint, read to host memory once."""

    def __init__(self, src: str):
        from experiments.interop import hf_import  # torch-side deps only when asked for

        self.src, self.params = src, hf_import.load_params(src)


def check_init_towers(init, params) -> int | PretrainedTowers:
    """Checks the `init.load` towers of a run_spec.InitSpec against their source: a vlax
    checkpoint's metadata (nothing else is read) or a transformers checkpoint (`init.hf`,
    read to host memory). Nothing compiles. Returns the checkpoint step to load, or the
    pretrained towers."""
    if init.hf:
        source = PretrainedTowers(init.hf)
        saved, step, where = run_meta.param_signature(source.params), source, init.hf
    else:
        saved, step = checkpointing.saved_param_signature(init.checkpoint, init.step)
        where = f"config.init.checkpoint={init.checkpoint} (step {step})"
    want = run_meta.param_signature(params)
    names = list(init.load)
    saved_towers = sorted({k.split("/")[0] for k in saved})
    for name in names:
        if name not in params or name not in saved_towers:
            raise ConfigError(
                f"config.init.load names {name!r}, but the checkpoint has {saved_towers} "
                f"and the model has {sorted(params)}."
            )
        mine = {k: v for k, v in want.items() if k == name or k.startswith(name + "/")}
        theirs = {k: v for k, v in saved.items() if k == name or k.startswith(name + "/")}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise run_meta.CheckpointMismatchError(
                f"{where}: tower {name!r} does not match this model's, e.g. {diff[:3]} "
                "(saved vs model [shape, dtype])."
            )
    return step


def load_init_towers(params, init, abstract, source: int | PretrainedTowers):
    """LiT-style init: only the `init.load` subtrees, placed straight into their shardings."""
    names = list(init.load)
    if isinstance(source, PretrainedTowers):
        loaded = {
            n: jax.tree.map(
                lambda x, a: jax.device_put(x.astype(a.dtype), a.sharding),
                source.params[n],
                abstract[n],
            )
            for n in names
        }
        logging.info("Loaded %s from the transformers checkpoint %s.", names, source.src)
    else:
        loaded, _ = checkpointing.load_param_subtrees(
            init.checkpoint, source, {n: abstract[n] for n in names}
        )
        logging.info("Loaded %s from %s (step %d).", names, init.checkpoint, source)
    return {**params, **loaded}
