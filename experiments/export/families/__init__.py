"""Each objective family's export declaration, registered by objective name.

A family module (one per objective of `objectives.REGISTRY` that exports) declares once what
the export targets need of it, as a `Family`:

  torch (torch_target.py, torch_models/): its model config with every field explicit
      (`complete`), the options the torch modules cannot mirror (`mismatches`), the
      vlax <-> torch name table (`rules`), its unscanned parameter shapes
      (`abstract_params`), the block scopes that trained scanned (`scanned`) and what the
      export computes differently from training (`notes`);
  Hugging Face (hf_export.py): the transformers classes it exports to exactly (`hf_targets`).

A new family adds its module and one entry in FAMILIES; its torch module class is named in
torch_models/loading.MODULES (that package stays free of jax and vlax).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np
from etils import epath

from experiments.interop.mapping import Rule

# objective name -> its family module (imported when asked for: one family's deps never load
# another's); each module defines FAMILY.
FAMILIES = {
    "contrastive": "experiments.export.families.two_tower",
    "prefix_lm": "experiments.export.families.prefix_lm",
}

Config = Mapping[str, Any]
State = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class HFTarget:
    """A transformers class that a family exports to exactly.

    Attributes:
      table: its experiments/interop module (NAME, mismatches, rules, hf_config).
      processor: the image-processor class its preprocessor_config.json names.
      write_tokenizer: (out dir, the run's tokenizer metadata, max_len) -> notes.
      finish: (state dict -> (the state the class computes vlax's loss with, notes)), where
        that differs from the params (CLIP's logit scale, capped inside vlax's loss).
    """

    table: ModuleType
    processor: str
    write_tokenizer: Callable[[epath.Path, Config, int], list[str]]
    finish: Callable[[State], tuple[State, list[str]]] | None = None

    @property
    def name(self) -> str:
        return self.table.NAME


@dataclasses.dataclass(frozen=True)
class Family:
    """What the export targets know of one objective (see the module docstring).

    `complete` and `mismatches` take a model config as a run records it; `rules`,
    `abstract_params`, `scanned` and `notes` take its completed form.
    """

    complete: Callable[[Config], dict[str, Any]]
    mismatches: Callable[[Config], list[str]]
    rules: Callable[[Config], list[Rule]]
    abstract_params: Callable[[Config, int], Any]
    scanned: Callable[[Config], list[str]]
    notes: Callable[[Config], list[str]]
    hf_targets: tuple[HFTarget, ...] = ()


def get(objective: str) -> Family:
    """The family registered under `objective`; a ValueError names the ones that export."""
    if objective not in FAMILIES:
        raise ValueError(
            f"objective {objective!r} has no export declaration; exported: {list(FAMILIES)}."
        )
    return importlib.import_module(FAMILIES[objective]).FAMILY
