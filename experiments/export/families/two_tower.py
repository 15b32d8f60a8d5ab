"""The contrastive family (objectives/contrastive.py `TwoTower`: CLIP, SigLIP, LiT) for export.

torch: torch_models/two_tower.py `TwoTower` (an image ViT "img", a text transformer "txt",
the loss's "log_temp" and, for sigmoid, "logit_bias"). Hugging Face: `CLIPModel` and
`SiglipModel` (name tables and configs in experiments/interop/hf_clip.py, hf_siglip.py),
each where the run's options are exactly that class's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments.export import tokenizer_files
from experiments.export.families import Family, HFTarget, common, torch_rules
from experiments.export.torch_models import config as config_lib
from experiments.interop import hf_clip, hf_import, hf_siglip
from experiments.interop.mapping import Rule

TOWERS = {"image": "image tower", "text": "text tower"}


def rules(cfg: Mapping[str, Any]) -> list[Rule]:
    """The vlax <-> torch_models.TwoTower name table of a completed model config."""
    txt = cfg["text"]
    table = torch_rules.vit(cfg["image"])
    table += [
        Rule("txt/token_embedding/embedding", "txt.token_embedding.weight"),
        Rule("txt/pos_embedding", "txt.pos_embedding"),
    ]
    if txt["type_vocab_size"] > 0:
        table.append(Rule("txt/type_embedding/embedding", "txt.type_embedding.weight"))
    if txt["embed_norm"]:
        table += torch_rules.layer_norm("txt/embedding_norm", "txt.embedding_norm")
    table += torch_rules.tower_common("txt", txt)
    table.append(Rule("log_temp", "log_temp"))
    if cfg["loss"] == "sigmoid":
        table.append(Rule("logit_bias", "logit_bias"))
    return table


def mismatches(model_config: Mapping[str, Any]) -> list[str]:
    """Fields and values of a recorded config that torch_models.TwoTower cannot mirror."""
    top = {k: v for k, v in model_config.items() if k not in TOWERS}
    return common.group_problems(
        [
            ("model", top, config_lib.TWO_TOWER_DEFAULTS, {"loss": config_lib.LOSSES}),
            (
                "model.image",
                model_config.get("image") or {},
                config_lib.VIT_DEFAULTS,
                {
                    "pool_type": config_lib.IMAGE_POOLS,
                    "posemb": config_lib.POSEMBS,
                    "activation": config_lib.ACTIVATIONS,
                },
            ),
            (
                "model.text",
                model_config.get("text") or {},
                config_lib.TEXT_DEFAULTS,
                {"pool_type": config_lib.TEXT_POOLS, "activation": config_lib.ACTIVATIONS},
            ),
        ]
    )


def notes(cfg: Mapping[str, Any]) -> list[str]:
    """What the export computes differently: each tower trained below float32."""
    return common.precision_notes({label: cfg[part] for part, label in TOWERS.items()})


def abstract_params(cfg: Mapping[str, Any], image_size: int) -> Any:
    """Unscanned fp32 param shapes of a completed config."""
    plain = {**cfg, **{part: common.plain(cfg[part]) for part in TOWERS}}
    return hf_import.abstract_params(plain, image_size)


def scanned(cfg: Mapping[str, Any]) -> list[str]:
    """The towers' encoder scopes whose blocks trained stacked (scan=True)."""
    return [f"{p}/encoder" for p, part in (("img", "image"), ("txt", "text")) if cfg[part]["scan"]]


def _clip_state(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    note = "logit_scale exported clamped at log(100), as vlax's loss applies it"
    return hf_clip.clamp_scale(state), [note]


FAMILY = Family(
    complete=config_lib.complete_two_tower,
    mismatches=mismatches,
    rules=rules,
    abstract_params=abstract_params,
    scanned=scanned,
    notes=notes,
    hf_targets=(
        HFTarget(hf_clip, "CLIPImageProcessor", tokenizer_files.write_fast, _clip_state),
        HFTarget(hf_siglip, "SiglipImageProcessor", tokenizer_files.write_siglip),
    ),
)
