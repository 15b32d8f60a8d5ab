"""vlax two-tower <-> Hugging Face `CLIPModel` (OpenAI CLIP layout), both directions.

Exact when the towers are CLIP-style: image cls pooling with a learned position table that
covers the cls token, `ln_pre`, a final norm, a bias-free patch embedding and projection;
text causal with EOS pooling, a final norm and a bias-free projection; the softmax loss.
`mismatches` names anything else, and the export refuses rather than write another model.
Its logit scale is exported clamped at 100, the cap vlax's loss applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from experiments.interop import hf_common
from experiments.interop.mapping import Rule
from models import text as text_lib
from models import vit as vit_lib

NAME = "CLIPModel"
MODEL_TYPE = "clip"
IGNORE = (r".*position_ids",)
# transformers pools CLIP text at argmax(input_ids) when eos_token_id == 2 (its legacy rule
# for OpenAI's vocabulary, where EOS is the largest id), not at the EOS token.
LEGACY_EOS_ID = 2

_IMAGE = dict(
    pool_type="cls", posemb="learn", ln_pre=True, final_norm=True, patch_bias=False, head_bias=False
)
_TEXT = dict(causal=True, pool_type="eos", final_norm=True, head_bias=False)
_IMAGE_KNOWN = (*_IMAGE, "num_classes", "activation", "norm_eps")
# Padding sits after EOS, which a causal tower's EOS output never sees: masking it or not is
# the same model (CLIPModel masks with attention_mask; imports use mask_padding=False, exact
# whatever token the tokenizer pads with).
_TEXT_KNOWN = (
    *_TEXT,
    "num_classes",
    "activation",
    "norm_eps",
    "vocab_size",
    "max_len",
    "pad_id",
    "eos_id",
    "mask_padding",
)


def mismatches(model_config: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    """Why this vlax model is not exactly a CLIPModel (empty: it is)."""
    img, txt = hf_common.image_tower(model_config), hf_common.text_tower(model_config)
    out = hf_common.field_mismatches(img, _IMAGE, "model.image")
    out += hf_common.field_mismatches(txt, _TEXT, "model.text")
    out += hf_common.non_default(vit_lib.ViT, img, _IMAGE_KNOWN, "model.image")
    out += hf_common.non_default(text_lib.TextTransformer, txt, _TEXT_KNOWN, "model.text")
    for tower, what in ((img, "model.image"), (txt, "model.text")):
        out += hf_common.activation(tower, what)[1]
        if tower["num_classes"] is None:
            out.append(f"{what}.num_classes is None (CLIPModel always has a projection)")
    if model_config.get("loss", "softmax") != "softmax":
        out.append(f"loss={model_config.get('loss')!r}: CLIPModel has no logit bias (softmax only)")
    if txt["eos_id"] is None:
        out.append("model.text.eos_id is None (CLIPModel pools at the EOS token)")
    elif txt["eos_id"] == LEGACY_EOS_ID:
        out.append(
            "the tokenizer's EOS id is 2, which transformers' CLIP reads as its legacy "
            "argmax pooling; retrain the tokenizer with this vlax version (EOS id 3)"
        )
    return out


def rules() -> list[Rule]:
    v, t = "vision_model", "text_model"
    return [
        Rule("img/cls", f"{v}.embeddings.class_embedding", "squeeze"),
        Rule("img/embedding/kernel", f"{v}.embeddings.patch_embedding.weight", "conv"),
        Rule("img/pos_embedding", f"{v}.embeddings.position_embedding.weight", "squeeze"),
        *hf_common.norm_rules("img/ln_pre", f"{v}.pre_layrnorm"),
        *hf_common.block_rules("img/encoder", f"{v}.encoder"),
        *hf_common.norm_rules("img/encoder/encoder_norm", f"{v}.post_layernorm"),
        Rule("img/head/kernel", "visual_projection.weight", "dense"),
        Rule("txt/token_embedding/embedding", f"{t}.embeddings.token_embedding.weight"),
        Rule("txt/pos_embedding", f"{t}.embeddings.position_embedding.weight"),
        *hf_common.block_rules("txt/encoder", f"{t}.encoder"),
        *hf_common.norm_rules("txt/encoder/encoder_norm", f"{t}.final_layer_norm"),
        Rule("txt/head/kernel", "text_projection.weight", "dense"),
        Rule("log_temp", "logit_scale"),
    ]


def hf_config(model_config: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """config.json of the CLIPModel (call only when `mismatches` is empty)."""
    img, txt = hf_common.image_tower(model_config), hf_common.text_tower(model_config)
    tok = meta.get("tokenizer") or {}
    image_size = int(meta["data"]["image_size"])
    vision = dict(
        hidden_size=img["width"],
        intermediate_size=img["mlp_dim"],
        num_hidden_layers=img["depth"],
        num_attention_heads=img["num_heads"],
        image_size=image_size,
        patch_size=img["patch_size"],
        num_channels=3,
        hidden_act=hf_common.ACTIVATIONS[img["activation"]],
        layer_norm_eps=img["norm_eps"],
        projection_dim=img["num_classes"],
    )
    text = dict(
        vocab_size=txt["vocab_size"],
        hidden_size=txt["width"],
        intermediate_size=txt["mlp_dim"],
        num_hidden_layers=txt["depth"],
        num_attention_heads=txt["num_heads"],
        max_position_embeddings=txt["max_len"],
        hidden_act=hf_common.ACTIVATIONS[txt["activation"]],
        layer_norm_eps=txt["norm_eps"],
        projection_dim=txt["num_classes"],
        pad_token_id=txt["pad_id"],
        eos_token_id=txt["eos_id"],
        bos_token_id=tok.get("bos_id", txt["eos_id"]),
    )
    return dict(
        architectures=[NAME],
        model_type=MODEL_TYPE,
        projection_dim=img["num_classes"],
        logit_scale_init_value=math.log(1 / 0.07),
        text_config=text,
        vision_config=vision,
        torch_dtype="float32",
    )


def clamp_scale(state: dict) -> dict:
    """vlax clamps the softmax scale at 100 inside the loss; CLIPModel does not."""
    cap = math.log(100.0)
    state["logit_scale"] = state["logit_scale"].clip(max=cap)
    return state


def vlax_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The vlax TwoTower config of a CLIPModel config.json (ValueError names a field it
    cannot represent)."""
    v, t = hf["vision_config"], hf["text_config"]

    def act(cfg, where):
        if cfg.get("hidden_act", "quick_gelu") not in hf_common.HF_ACTIVATIONS:
            raise ValueError(
                f"{where}.hidden_act={cfg['hidden_act']!r} is not supported; "
                f"supported: {sorted(hf_common.HF_ACTIVATIONS)}"
            )
        return hf_common.HF_ACTIVATIONS[cfg.get("hidden_act", "quick_gelu")]

    for key in ("image_size", "patch_size"):
        if isinstance(v.get(key), list | tuple):
            raise ValueError(f"vision_config.{key}={v[key]} is not square; vlax needs one int")
    if v.get("num_channels", 3) != 3:
        raise ValueError(f"vision_config.num_channels={v['num_channels']}: vlax needs RGB (3)")
    projection = hf.get("projection_dim", 512)
    eos = t.get("eos_token_id", 49407)
    if eos == LEGACY_EOS_ID:
        # Legacy OpenAI configs: transformers pools at argmax(input_ids); with OpenAI's
        # vocabulary that is the EOS token, the largest id.
        eos = t.get("vocab_size", 49408) - 1
    image = dict(
        width=v.get("hidden_size", 768),
        depth=v.get("num_hidden_layers", 12),
        mlp_dim=v.get("intermediate_size", 3072),
        num_heads=v.get("num_attention_heads", 12),
        patch_size=v.get("patch_size", 32),
        **_IMAGE,
        num_classes=projection,
        activation=act(v, "vision_config"),
        norm_eps=v.get("layer_norm_eps", 1e-5),
    )
    text = dict(
        width=t.get("hidden_size", 512),
        depth=t.get("num_hidden_layers", 12),
        mlp_dim=t.get("intermediate_size", 2048),
        num_heads=t.get("num_attention_heads", 8),
        vocab_size=t.get("vocab_size", 49408),
        max_len=t.get("max_position_embeddings", 77),
        **_TEXT,
        num_classes=projection,
        activation=act(t, "text_config"),
        norm_eps=t.get("layer_norm_eps", 1e-5),
        pad_id=t.get("pad_token_id", 1),
        eos_id=eos,
        mask_padding=False,
    )
    return dict(image=image, text=text, loss="softmax", loss_impl="sharded")


def image_size(hf: Mapping[str, Any]) -> int:
    return int(hf["vision_config"].get("image_size", 224))
