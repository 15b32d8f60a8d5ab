"""`load`: an exported directory as the module of the objective its config.json records."""

from __future__ import annotations

import os

import torch

from . import prefix_lm, two_tower
from .files import load_weights, read_config

# objective -> module class, built as cls(model_config, image_size); one per family that
# experiments/export/families declares (this package stays free of vlax, so it names them).
MODULES: dict[str, type[torch.nn.Module]] = {
    "contrastive": two_tower.TwoTower,
    "prefix_lm": prefix_lm.PrefixLM,
}


def load(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> two_tower.TwoTower | prefix_lm.PrefixLM:
    """The exported model in `directory`, fp32, in eval mode: a `TwoTower` for a contrastive
    run (also exports without an "objective" entry), a `PrefixLM` for a prefix_lm one."""
    cfg = read_config(directory)
    objective = cfg.get("objective", "contrastive")
    if objective not in MODULES:
        raise ValueError(
            f"{directory}: objective {objective!r} unknown here; known {list(MODULES)}."
        )
    model = MODULES[objective](cfg["model_config"], cfg["image_size"])
    return load_weights(model, directory, device)
