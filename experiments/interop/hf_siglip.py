"""vlax two-tower <-> Hugging Face `SiglipModel`, both directions.

Exact when the towers are SigLIP-style: image MAP-head pooling over learned position
embeddings (no cls token, no `ln_pre`), a final norm, a biased patch embedding and no
projection; text bidirectional, pooled at the final position with padding attended
(`pool_type="final"`, `mask_padding=False`), a final norm and a biased projection to the
image width; the sigmoid loss; a tokenizer that canonicalises text as `SiglipTokenizer`
does (`config.data.tokenizer.canonicalize=True`). Feed the HF model `input_ids` padded to
`max_length` without an attention mask, as SigLIP was trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.interop import hf_common
from experiments.interop.mapping import Rule
from models import text as text_lib
from models import vit as vit_lib

NAME = "SiglipModel"
MODEL_TYPE = "siglip"
IGNORE = (r".*position_ids",)

_IMAGE = dict(
    pool_type="map",
    posemb="learn",
    ln_pre=False,
    final_norm=True,
    patch_bias=True,
    num_classes=None,
)
_TEXT = dict(causal=False, pool_type="final", mask_padding=False, final_norm=True, head_bias=True)
_IMAGE_KNOWN = (*_IMAGE, "activation", "norm_eps")
_TEXT_KNOWN = (
    *_TEXT,
    "num_classes",
    "activation",
    "norm_eps",
    "vocab_size",
    "max_len",
    "pad_id",
    "eos_id",
)


def mismatches(model_config: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    """Why this vlax model is not exactly a SiglipModel (empty: it is)."""
    img, txt = hf_common.image_tower(model_config), hf_common.text_tower(model_config)
    out = hf_common.field_mismatches(img, _IMAGE, "model.image")
    out += hf_common.field_mismatches(txt, _TEXT, "model.text")
    out += hf_common.non_default(vit_lib.ViT, img, _IMAGE_KNOWN, "model.image")
    out += hf_common.non_default(text_lib.TextTransformer, txt, _TEXT_KNOWN, "model.text")
    for tower, what in ((img, "model.image"), (txt, "model.text")):
        out += hf_common.activation(tower, what)[1]
    if txt["num_classes"] != img["width"]:
        out.append(
            f"model.text.num_classes={txt['num_classes']} must equal the image width "
            f"{img['width']} (SiglipModel compares the MAP output with the text head)"
        )
    if model_config.get("loss") != "sigmoid":
        out.append(f"loss={model_config.get('loss')!r}: SiglipModel is the sigmoid loss")
    tok = meta.get("tokenizer")
    if tok and not tok.get("canonicalize"):
        out.append(
            "the tokenizer does not canonicalise text (SiglipTokenizer strips "
            "punctuation): set config.data.tokenizer.canonicalize=True"
        )
    return out


def rules() -> list[Rule]:
    v, t, h = "vision_model", "text_model", "vision_model.head"
    attn = "img/map_head/attn"
    return [
        Rule("img/embedding/kernel", f"{v}.embeddings.patch_embedding.weight", "conv"),
        Rule("img/embedding/bias", f"{v}.embeddings.patch_embedding.bias"),
        Rule("img/pos_embedding", f"{v}.embeddings.position_embedding.weight", "squeeze"),
        *hf_common.block_rules("img/encoder", f"{v}.encoder"),
        *hf_common.norm_rules("img/encoder/encoder_norm", f"{v}.post_layernorm"),
        Rule("img/map_head/probe", f"{h}.probe"),
        Rule(
            tuple(f"{attn}/{n}/kernel" for n in ("query", "key", "value")),
            f"{h}.attention.in_proj_weight",
            "heads_in",
        ),
        Rule(
            tuple(f"{attn}/{n}/bias" for n in ("query", "key", "value")),
            f"{h}.attention.in_proj_bias",
            "flatten",
        ),
        Rule(f"{attn}/out/kernel", f"{h}.attention.out_proj.weight", "heads_out"),
        Rule(f"{attn}/out/bias", f"{h}.attention.out_proj.bias"),
        *hf_common.norm_rules("img/map_head/ln", f"{h}.layernorm"),
        Rule("img/map_head/mlp/fc1/kernel", f"{h}.mlp.fc1.weight", "dense"),
        Rule("img/map_head/mlp/fc1/bias", f"{h}.mlp.fc1.bias"),
        Rule("img/map_head/mlp/fc2/kernel", f"{h}.mlp.fc2.weight", "dense"),
        Rule("img/map_head/mlp/fc2/bias", f"{h}.mlp.fc2.bias"),
        Rule("txt/token_embedding/embedding", f"{t}.embeddings.token_embedding.weight"),
        Rule("txt/pos_embedding", f"{t}.embeddings.position_embedding.weight"),
        *hf_common.block_rules("txt/encoder", f"{t}.encoder"),
        *hf_common.norm_rules("txt/encoder/encoder_norm", f"{t}.final_layer_norm"),
        Rule("txt/head/kernel", f"{t}.head.weight", "dense"),
        Rule("txt/head/bias", f"{t}.head.bias"),
        Rule("log_temp", "logit_scale", "vector1"),
        Rule("logit_bias", "logit_bias", "vector1"),
    ]


def hf_config(model_config: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """config.json of the SiglipModel (call only when `mismatches` is empty)."""
    img, txt = hf_common.image_tower(model_config), hf_common.text_tower(model_config)
    tok = meta.get("tokenizer") or {}
    vision = dict(
        hidden_size=img["width"],
        intermediate_size=img["mlp_dim"],
        num_hidden_layers=img["depth"],
        num_attention_heads=img["num_heads"],
        image_size=int(meta["data"]["image_size"]),
        patch_size=img["patch_size"],
        num_channels=3,
        hidden_act=hf_common.ACTIVATIONS[img["activation"]],
        layer_norm_eps=img["norm_eps"],
        vision_use_head=True,
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
        projection_size=txt["num_classes"],
        pad_token_id=txt["pad_id"],
        eos_token_id=tok.get("eos_id", txt["eos_id"]),
        bos_token_id=tok.get("bos_id"),
    )
    return dict(
        architectures=[NAME],
        model_type=MODEL_TYPE,
        text_config=text,
        vision_config=vision,
        torch_dtype="float32",
    )


def vlax_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The vlax TwoTower config of a SiglipModel config.json (ValueError names a field)."""
    v, t = hf["vision_config"], hf["text_config"]

    def act(cfg, where):
        name = cfg.get("hidden_act", "gelu_pytorch_tanh")
        if name not in hf_common.HF_ACTIVATIONS:
            raise ValueError(
                f"{where}.hidden_act={name!r} is not supported; "
                f"supported: {sorted(hf_common.HF_ACTIVATIONS)}"
            )
        return hf_common.HF_ACTIVATIONS[name]

    for key in ("image_size", "patch_size"):
        if isinstance(v.get(key), list | tuple):
            raise ValueError(f"vision_config.{key}={v[key]} is not square; vlax needs one int")
    if not v.get("vision_use_head", True):
        raise ValueError("vision_config.vision_use_head=False: vlax's SigLIP tower has the head")
    width = v.get("hidden_size", 768)
    image = dict(
        width=width,
        depth=v.get("num_hidden_layers", 12),
        mlp_dim=v.get("intermediate_size", 3072),
        num_heads=v.get("num_attention_heads", 12),
        patch_size=v.get("patch_size", 16),
        **_IMAGE,
        activation=act(v, "vision_config"),
        norm_eps=v.get("layer_norm_eps", 1e-6),
    )
    projection = t.get("projection_size") or t.get("hidden_size", 768)
    if projection != width:
        raise ValueError(
            f"text_config.projection_size={projection} differs from the vision hidden_size {width}"
        )
    text = dict(
        width=t.get("hidden_size", 768),
        depth=t.get("num_hidden_layers", 12),
        mlp_dim=t.get("intermediate_size", 3072),
        num_heads=t.get("num_attention_heads", 12),
        vocab_size=t.get("vocab_size", 32000),
        max_len=t.get("max_position_embeddings", 64),
        **_TEXT,
        num_classes=projection,
        activation=act(t, "text_config"),
        norm_eps=t.get("layer_norm_eps", 1e-6),
        pad_id=t.get("pad_token_id", 1),
        eos_id=t.get("eos_token_id"),
    )
    return dict(image=image, text=text, loss="sigmoid", loss_impl="sharded")


def image_size(hf: Mapping[str, Any]) -> int:
    return int(hf["vision_config"].get("image_size", 224))
