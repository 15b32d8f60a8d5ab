"""`config.precision` applied to a model config: every tower of every family gets its dtypes.

A policy (models/precision.py: "fp32", "bf16_mixed", "bf16_act") names a module's `dtype`
(activations) and `matmul_dtype` (matmul inputs). The objective declares its towers in
`CONFIG_MODULES` ({config group: module class}, e.g. PrefixLM's image, encoder and decoder);
each group whose module class has those fields gets them from the policy, so no tower of any
family is left at another precision or refused for a key it does not know. One place sets
precision: a tower that names other dtypes itself contradicts the policy and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from experiments.training.config_utils import ConfigError, module_fields
from models import precision as precision_lib


def towers(objective_cls: type) -> dict[str, type]:
    """{config group: module class} of the objective's towers that take a precision."""
    fields = set(precision_lib.policy_fields("fp32"))
    return {
        group: cls
        for group, cls in getattr(objective_cls, "CONFIG_MODULES", {}).items()
        if fields <= module_fields(cls)
    }


def _check_tower(tower: str, sub: Mapping[str, Any], fields: Mapping[str, Any], name: str):
    for key, want in fields.items():
        own = sub.get(key, want)
        if own is None or (want is not None and jnp.dtype(own) == jnp.dtype(want)):
            continue
        want_text = f" ({key}={want!r})" if want is not None else ""
        raise ConfigError(
            f"config.model.{tower}.{key}={own!r} contradicts config.precision={name!r}"
            f"{want_text}: choose the policy with config.precision "
            f"({sorted(precision_lib.POLICIES)}) and drop the tower's {key}."
        )


def apply(objective_cls: type, model_config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """`model_config` with `dtype` / `matmul_dtype` of every precision-taking tower set from
    the policy `name` (fp32 leaves the configs as written: it is the modules' default).

    Raises ConfigError for an unknown policy or a tower whose own dtypes contradict it."""
    try:
        fields = precision_lib.policy_fields(name)
    except ValueError as e:
        raise ConfigError(f"config.precision: {e}") from None
    out = dict(model_config)
    for tower in towers(objective_cls):
        sub = dict(model_config.get(tower) or {})
        _check_tower(tower, sub, fields, name)
        out[tower] = sub if name == "fp32" else {**sub, **fields}
    return out
