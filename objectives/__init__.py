"""Objectives by name: one nn.Module per learning strategy, `__call__(batch, *, train)`
returns `(loss, metrics)`; named inference methods (`embed_image`, ...) serve evaluators."""

from __future__ import annotations

import importlib

# name -> "module:Class"; imported lazily so one objective's deps never load another's.
REGISTRY = {
    "contrastive": "objectives.contrastive:TwoTower",
    "prefix_lm": "objectives.prefix_lm:PrefixLM",
}


def get_objective(name: str) -> type:
    """Returns the objective class registered under `name`."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown objective {name!r}; registered: {sorted(REGISTRY)}.")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
