"""The vlax model config as data: field defaults, size variants and their resolution.

Copies of the vlax dataclass defaults (`models.vit.ViT`, `models.text.TextTransformer`,
`models.decoder.Decoder`, `models.layers.Encoder`, `objectives.contrastive.TwoTower`,
`objectives.prefix_lm.PrefixLM`) and of `models.variants`, so this package needs no jax.
tests/export/test_torch_target.py and tests/export/test_torch_prefix_lm.py check that the
copies equal the originals. The modules read every field except those that only change
training or speed (head_zeroinit, dropout, scan, remat, remat_policy, jit_blocks,
attn_implementation, loss_impl, temperature_init, bias_init) and dtype / matmul_dtype: they
compute in fp32 whatever precision the run used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Fields both towers share (models/tower.py `Tower`); dtype as the string vlax accepts.
_TOWER: dict[str, Any] = {
    "variant": None,
    "final_norm": True,
    "num_classes": None,
    "head_bias": True,
    "head_zeroinit": False,
    "activation": "gelu",
    "norm_eps": 1e-6,
    "dropout": 0.0,
    "scan": False,
    "remat": False,
    "remat_policy": "full",
    "jit_blocks": True,
    "dtype": "float32",
    "matmul_dtype": None,
    "attn_implementation": None,
}

VIT_DEFAULTS: dict[str, Any] = {
    **_TOWER,
    "width": 768,
    "depth": 12,
    "mlp_dim": 3072,
    "num_heads": 12,
    "patch_size": 16,
    "posemb": "learn",
    "pool_type": "cls",
    "ln_pre": False,
    "patch_bias": True,
}

TEXT_DEFAULTS: dict[str, Any] = {
    **_TOWER,
    "width": 512,
    "depth": 12,
    "mlp_dim": 2048,
    "num_heads": 8,
    "vocab_size": 32000,
    "max_len": 64,
    "causal": True,
    "pool_type": "eos",
    "pad_id": 0,
    "eos_id": None,
    "mask_padding": True,
    "post_norm": False,
    "embed_norm": False,
    "type_vocab_size": 0,
}

TWO_TOWER_DEFAULTS: dict[str, Any] = {
    "loss": "softmax",
    "loss_impl": "sharded",
    "temperature_init": None,
    "bias_init": -10.0,
}

# models/variants.py: name -> (width, depth, mlp_dim, num_heads)
SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
}

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
IMAGE_POOLS = ("cls", "gap", "map", "none")
POSEMBS = ("learn", "sincos2d")
TEXT_POOLS = ("eos", "first", "last", "final", "mean", "map")
LOSSES = ("softmax", "sigmoid")
SOFTMAX_MAX_LOG_TEMP = math.log(100.0)  # CLIP's cap on the softmax logit scale


def decode_variant(variant: str) -> dict[str, int]:
    """ "B/16" -> {"width", "depth", "mlp_dim", "num_heads", "patch_size"} (as vlax does)."""
    size, sep, patch = variant.partition("/")
    if size not in SIZES:
        raise ValueError(f"Unknown model variant {variant!r}: size must be one of {list(SIZES)}.")
    width, depth, mlp_dim, num_heads = SIZES[size]
    out = {"width": width, "depth": depth, "mlp_dim": mlp_dim, "num_heads": num_heads}
    if sep:
        if not patch.isdigit() or int(patch) <= 0:
            raise ValueError(f"Bad patch size in variant {variant!r}.")
        out["patch_size"] = int(patch)
    return out


def unknown_fields(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """Fields of `config` that these modules do not know (a newer vlax option)."""
    return sorted(set(config) - set(defaults))


def complete(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of a tower config: absent ones take the vlax defaults; unknown ones raise."""
    unknown = unknown_fields(config, defaults)
    if unknown:
        raise ValueError(f"Options unknown to the torch modules: {unknown}.")
    return {**defaults, **config}


def sizes(config: Mapping[str, Any]) -> dict[str, Any]:
    """A completed tower config with its `variant` decoded into the size fields."""
    out = dict(config)
    if out.get("variant") is not None:
        decoded = decode_variant(out["variant"])
        out.update({k: v for k, v in decoded.items() if k in out})
    return out


def complete_two_tower(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """{"image": {...}, "text": {...}, "loss", ...} with every field explicit."""
    top = {k: v for k, v in model_config.items() if k not in ("image", "text")}
    return {
        **complete(top, TWO_TOWER_DEFAULTS),
        "image": complete(model_config.get("image") or {}, VIT_DEFAULTS),
        "text": complete(model_config.get("text") or {}, TEXT_DEFAULTS),
    }


# models/decoder.py `Decoder`.
DECODER_DEFAULTS: dict[str, Any] = {
    "variant": None,
    "vocab_size": 32000,
    "width": 512,
    "depth": 8,
    "mlp_dim": 2048,
    "num_heads": 8,
    "num_kv_heads": None,
    "head_dim": None,
    "mlp_type": "gelu",
    "activation": "gelu",
    "norm_type": "layernorm",
    "norm_eps": 1e-6,
    "attn_bias": True,
    "posemb": "learn",
    "rope_base": 10_000.0,
    "max_len": 512,
    "tie_embeddings": True,
    "cross_attention": False,
    "pad_id": None,
    "dropout": 0.0,
    "scan": False,
    "remat": False,
    "remat_policy": "full",
    "jit_blocks": True,
    "dtype": "float32",
    "matmul_dtype": None,
    "attn_implementation": None,
}
MLP_TYPES = ("gelu", "swiglu")
NORM_TYPES = ("layernorm", "rmsnorm")
DECODER_POSEMBS = ("learn", "rope", "none")

# objectives/prefix_lm.py `PrefixLM` ("image" and "decoder" have no default).
PREFIX_LM_DEFAULTS: dict[str, Any] = {
    "encoder": None,
    "architecture": "encoder_decoder",
    "bos_id": 2,
    "eos_id": 3,
    "pad_id": 0,
}
PREFIX_LM_REQUIRED = ("image", "decoder")
# PrefixLM's bidirectional `encoder` group: `models.layers.Encoder` fields with PrefixLM's
# defaults (mlp_dim None = 4 x the decoder width). dtype and matmul_dtype, when absent, are
# the decoder's (ENCODER_FROM_DECODER). Runs whose group held only depth / num_heads /
# mlp_dim complete to the same encoder.
ENCODER_DEFAULTS: dict[str, Any] = {
    "depth": 2,
    "num_heads": 4,
    "mlp_dim": None,
    "activation": "gelu",
    "dropout": 0.0,
    "causal": False,
    "scan": False,
    "remat": False,
    "remat_policy": "full",
    "jit_blocks": True,
    "final_norm": True,
    "post_norm": False,
    "norm_eps": 1e-6,
    "attn_implementation": None,
}
ENCODER_FROM_DECODER = ("dtype", "matmul_dtype")
ARCHITECTURES = ("encoder_decoder", "decoder_only")


def decoder_sizes(config: Mapping[str, Any]) -> dict[str, int]:
    """Effective width, depth, mlp_dim, num_heads (after `variant`), num_kv_heads, head_dim
    of a completed decoder config; raises ValueError as vlax's `Decoder.config` does."""
    cfg = {k: config[k] for k in ("width", "depth", "mlp_dim", "num_heads")}
    if config.get("variant") is not None:
        decoded = decode_variant(config["variant"])
        if "patch_size" in decoded:
            raise ValueError(f"Decoder variant {config['variant']!r} cannot name a patch size.")
        cfg.update(decoded)
    cfg["num_kv_heads"] = config["num_kv_heads"] or cfg["num_heads"]
    if cfg["num_heads"] % cfg["num_kv_heads"]:
        raise ValueError(
            f"num_kv_heads {cfg['num_kv_heads']} does not divide num_heads {cfg['num_heads']}."
        )
    if config["head_dim"] is None and cfg["width"] % cfg["num_heads"]:
        raise ValueError(f"width {cfg['width']} is not divisible by {cfg['num_heads']} heads.")
    cfg["head_dim"] = config["head_dim"] or cfg["width"] // cfg["num_heads"]
    for field, valid in (
        ("mlp_type", MLP_TYPES),
        ("norm_type", NORM_TYPES),
        ("posemb", DECODER_POSEMBS),
        ("activation", ACTIVATIONS),
    ):
        if config[field] not in valid:
            raise ValueError(f"Unknown {field} {config[field]!r}: use one of {valid}.")
    return cfg


def complete_prefix_lm(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """{"image", "decoder", "encoder", "architecture", ids} with every field explicit.

    As PrefixLM does: the decoder's pad_id defaults to the model's; its cross_attention is
    the architecture's (never a config field); the encoder (encoder_decoder only) has every
    `layers.Encoder` field, mlp_dim resolved and dtype / matmul_dtype the decoder's unless
    set. Unknown fields raise.
    """
    missing = [k for k in PREFIX_LM_REQUIRED if k not in model_config]
    if missing:
        raise ValueError(f"A PrefixLM model config needs {missing}.")
    top = {k: v for k, v in model_config.items() if k not in PREFIX_LM_REQUIRED}
    top = complete(top, PREFIX_LM_DEFAULTS)
    dec_in = dict(model_config["decoder"] or {})
    if "cross_attention" in dec_in:
        raise ValueError("decoder.cross_attention is set by the architecture, not the config.")
    dec = complete({"pad_id": top["pad_id"], **dec_in}, DECODER_DEFAULTS)
    del dec["cross_attention"]
    out = {**top, "image": complete(model_config["image"] or {}, VIT_DEFAULTS), "decoder": dec}
    if top["architecture"] == "encoder_decoder":
        defaults = {**ENCODER_DEFAULTS, **{k: dec[k] for k in ENCODER_FROM_DECODER}}
        enc = complete(dict(top["encoder"] or {}), defaults)
        if enc["mlp_dim"] is None:
            enc["mlp_dim"] = 4 * decoder_sizes(dec)["width"]
        out["encoder"] = enc
    return out
