"""The prefix_lm family (objectives/prefix_lm.py `PrefixLM`: SimVLM) for export.

torch: torch_models/prefix_lm.py `PrefixLM` (an image ViT "img" without pooling, "img_proj"
when its width differs from the decoder's, and per architecture: "encoder_decoder" a text
embedding "txt_embed" + "txt_pos" and a bidirectional "encoder" that the decoder "dec"
cross-attends to; "decoder_only" one decoder over image tokens and text). No transformers
class is this model: no Hugging Face target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.export.families import Family, common, torch_rules
from experiments.export.torch_models import config as config_lib
from experiments.interop.mapping import Rule
from objectives.prefix_lm import PrefixLM

# The encoder group's fields as a run may record them: layers.Encoder's, dtype included
# (decoder_only ignores the group, as vlax does).
_ENCODER_FIELDS = {
    **config_lib.ENCODER_DEFAULTS,
    **{k: config_lib.DECODER_DEFAULTS[k] for k in config_lib.ENCODER_FROM_DECODER},
}


def _cross(cfg: Mapping[str, Any]) -> bool:
    return cfg["architecture"] == "encoder_decoder"


def rules(cfg: Mapping[str, Any]) -> list[Rule]:
    """The vlax <-> torch_models.PrefixLM name table of a completed model config."""
    table = torch_rules.vit({**cfg["image"], "pool_type": "none", "num_classes": None})
    image_width = config_lib.sizes(cfg["image"])["width"]
    if image_width != config_lib.decoder_sizes(cfg["decoder"])["width"]:
        table += torch_rules.dense("img_proj", "img_proj")
    if _cross(cfg):
        table += [
            Rule("txt_embed/embedding", "txt_embed.weight"),
            Rule("txt_pos", "txt_pos"),
            *torch_rules.encoder("encoder", "encoder", cfg["encoder"]["final_norm"]),
        ]
    return table + torch_rules.decoder({**cfg["decoder"], "cross_attention": _cross(cfg)})


def mismatches(model_config: Mapping[str, Any]) -> list[str]:
    """Fields and values of a recorded config that torch_models.PrefixLM cannot mirror."""
    required = config_lib.PREFIX_LM_REQUIRED
    missing = [k for k in required if k not in model_config]
    if missing:
        return [
            f"objective 'prefix_lm': the model config has no {missing} (a PrefixLM config "
            f"holds {[*required, *config_lib.PREFIX_LM_DEFAULTS]})."
        ]
    top = {k: v for k, v in model_config.items() if k not in required}
    decoder = dict(model_config["decoder"] or {})
    problems = []
    if decoder.pop("cross_attention", None) is not None:
        problems.append("model.decoder.cross_attention is the architecture's, not a field.")
    decoder_fields = {
        k: v for k, v in config_lib.DECODER_DEFAULTS.items() if k != "cross_attention"
    }
    problems += common.group_problems(
        [
            (
                "model",
                top,
                config_lib.PREFIX_LM_DEFAULTS,
                {"architecture": config_lib.ARCHITECTURES},
            ),
            (
                "model.image",
                model_config["image"] or {},
                config_lib.VIT_DEFAULTS,
                {"posemb": config_lib.POSEMBS, "activation": config_lib.ACTIVATIONS},
            ),
            (
                "model.decoder",
                decoder,
                decoder_fields,
                {
                    "mlp_type": config_lib.MLP_TYPES,
                    "norm_type": config_lib.NORM_TYPES,
                    "posemb": config_lib.DECODER_POSEMBS,
                    "activation": config_lib.ACTIVATIONS,
                },
            ),
        ]
    )
    if model_config.get("architecture", "encoder_decoder") == "encoder_decoder":
        encoder = model_config.get("encoder") or {}
        allowed = {"activation": config_lib.ACTIVATIONS}
        problems += common.group_problems([("model.encoder", encoder, _ENCODER_FIELDS, allowed)])
    if not problems:
        try:  # sizes vlax itself would refuse (a run cannot have them; a hand-made config can)
            cfg = config_lib.complete_prefix_lm(model_config)
            config_lib.decoder_sizes(cfg["decoder"])
            config_lib.sizes(cfg["image"])
        except ValueError as e:
            problems.append(f"model: {e}")
    return problems


def _parts(cfg: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """{label: completed group} of the groups with a compute dtype."""
    parts = {"image tower": cfg["image"], "decoder": cfg["decoder"]}
    return {**parts, "encoder": cfg["encoder"]} if _cross(cfg) else parts


def notes(cfg: Mapping[str, Any]) -> list[str]:
    """What the export computes differently: each group trained below float32."""
    return common.precision_notes(_parts(cfg))


def abstract_params(cfg: Mapping[str, Any], image_size: int) -> Any:
    """Unscanned fp32 param shapes of a completed config."""
    plain = {**cfg, "image": common.plain(cfg["image"]), "decoder": common.plain(cfg["decoder"])}
    if _cross(cfg):
        plain["encoder"] = common.plain(cfg["encoder"])
    batch = {
        "image": jnp.zeros((1, image_size, image_size, 3)),
        "tokens": jnp.ones((1, 1), jnp.int32),
        "prefix_len": jnp.zeros((1,), jnp.int32),
        "has_image": jnp.ones((1,), bool),
    }
    return nn.meta.unbox(jax.eval_shape(PrefixLM(**plain).init, jax.random.key(0), batch))["params"]


def scanned(cfg: Mapping[str, Any]) -> list[str]:
    """The block scopes whose blocks trained stacked (scan=True)."""
    scopes = {"img/encoder": cfg["image"], "dec": cfg["decoder"]}
    if _cross(cfg):
        scopes["encoder"] = cfg["encoder"]
    return [scope for scope, group in scopes.items() if group["scan"]]


FAMILY = Family(
    complete=config_lib.complete_prefix_lm,
    mismatches=mismatches,
    rules=rules,
    abstract_params=abstract_params,
    scanned=scanned,
    notes=notes,
)
