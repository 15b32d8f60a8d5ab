"""What the families' torch declarations share: the check of a config group against the
torch modules' fields and values, the precision notes, and the plain settings (unscanned,
fp32) under which a family's parameter shapes are traced for import."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.export.torch_models import config as config_lib

# Tower settings that change neither a parameter's name nor its shape, fixed for tracing the
# unscanned parameter tree that an import fills (the compute dtype does not matter there).
PLAIN: dict[str, Any] = {
    "scan": False,
    "remat": False,
    "remat_policy": "full",
    "dtype": "float32",
    "matmul_dtype": None,
}

# (where, the group's config, the torch modules' fields and defaults, allowed values)
Group = tuple[str, Mapping[str, Any], Mapping[str, Any], Mapping[str, tuple]]


def plain(group: Mapping[str, Any]) -> dict[str, Any]:
    """A completed group's config under PLAIN."""
    return {**group, **PLAIN}


def group_problems(groups: list[Group]) -> list[str]:
    """One sentence per field unknown to the torch modules and per value they cannot mirror."""
    problems = []
    for where, cfg, defaults, allowed in groups:
        problems += [
            f"{where}.{field} is an option the torch modules do not mirror."
            for field in config_lib.unknown_fields(cfg, defaults)
        ]
        problems += [
            f"{where}.{field}={cfg[field]!r} has no torch mirror (known: {list(values)})."
            for field, values in allowed.items()
            if field in cfg and cfg[field] not in values
        ]
    return problems


def precision_notes(parts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """{label: completed group} -> a note for each group that trained below float32."""
    return [
        f"the {label} trained with {key}={cfg[key]}; the export computes in float32."
        for label, cfg in parts.items()
        for key in ("dtype", "matmul_dtype")
        if cfg.get(key) not in ("float32", None)
    ]
