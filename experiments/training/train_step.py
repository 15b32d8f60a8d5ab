"""The jitted train step: loss and gradients (exact accumulation over micro-batches when
asked), the optax update, and the metrics every log line carries."""

from __future__ import annotations

from typing import Any

import jax
import optax

from experiments.training import accumulation, global_norm
from experiments.training import optimizer as optimizer_lib


def make_train_step(
    model,
    tx,
    schedule,
    freeze: tuple[str, ...],
    seed: int,
    microbatches: int = 1,
    layout: Any = None,
):
    """(state, batch) -> (state, metrics); pure, for jax.jit with donation.

    microbatches > 1: the gradient of the whole batch, accumulated exactly over that many
    micro-batches (`experiments.training.accumulation`). `layout`: the abstract params with their
    shardings, which groups the norms' reductions (`experiments.training.global_norm`)."""
    base_rng = jax.random.key(seed)

    def train_step(state, batch):
        rng = jax.random.fold_in(base_rng, state["step"])

        def loss_fn(params):
            return model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})

        if microbatches > 1:
            (loss, metrics), grads = accumulation.loss_and_grads(
                model, state["params"], batch, microbatches, rng
            )
        else:
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optimizer_lib.trainable_global_norm(grads, freeze, layout),
            "param_norm": global_norm.global_norm(params, layout),
            "learning_rate": schedule(state["step"]),
        }
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step
