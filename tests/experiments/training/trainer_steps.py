"""Helpers for tests that run the trainer's own jitted step on given batches."""

import flax.linen as nn
import jax

from experiments.training import inputs, sharding, trainer


def run_steps(config, devices, batches):
    """Returns (losses, initial params, final params, final state) of the trainer's step."""
    s = trainer.setup(config, devices=devices)
    state, losses = s.fresh_state(), []
    init = jax.device_get(state["params"])  # before the donated steps consume the buffers
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        for local in batches:
            state, metrics = s.step_fn(state, global_batch(s, local))
            losses.append(float(metrics["loss"]))
    return losses, init, jax.device_get(state["params"]), state


def global_batch(s, local):
    """A host batch as the step takes it: sharded over the mesh, without the data index."""
    return sharding.to_global_batch({k: v for k, v in local.items() if k != "index"}, s.mesh)


def train_batches(config, n):
    """The first n host batches of the config's training stream."""
    data = inputs.Inputs(config.data, global_batch_size=config.batch_size, seed=config.seed)
    it = data.train_iterator()
    return [next(it) for _ in range(n)]


def key_path(key_path):
    return jax.tree_util.keystr(key_path, simple=True, separator="/")
