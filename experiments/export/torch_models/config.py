"""The vlax model config as data: field defaults, size variants and their resolution.

Copies of the vlax dataclass defaults (`models.vit.ViT`, `models.text.TextTransformer`,
`objectives.contrastive.TwoTower`) and of `models.variants`, so this package needs no jax.
tests/export/test_torch_target.py checks that the copies equal the originals. The modules
read every field except those that only change training or speed (head_zeroinit, dropout,
scan, remat, attn_implementation, loss_impl, temperature_init, bias_init) and dtype: they
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
    "dtype": "float32",
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
