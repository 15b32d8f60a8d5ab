"""Pretrained transformers checkpoints as vlax towers: `config.init.hf`, `evaluate --hf`
and the import half of the export round trips.

    towers = hf_import.tower_configs(dir)   # {"image": ViT kwargs, "text": ...} for a config
    params = hf_import.load_params(dir)     # {"img": ..., "txt": ..., "log_temp": ...}
    config, params, size = hf_import.read_two_tower(dir)   # a whole CLIPModel / SiglipModel

CLIPModel and SiglipModel directories give both towers (and the loss parameters); a
BertModel directory (e.g. all-MiniLM-L6-v2) gives a text tower ("txt"), mean-pooled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from safetensors.numpy import load_file

import objectives
from experiments.interop import hf_bert, hf_clip, hf_siglip, mapping
from experiments.interop.mapping import InteropError

TWO_TOWER_TARGETS = (hf_clip, hf_siglip)
_BY_ARCH = {t.NAME: t for t in TWO_TOWER_TARGETS}
TWO_TOWER = set(_BY_ARCH)
TEXT_ONLY = {"BertModel", "BertForMaskedLM", "BertForPreTraining"}


def architecture(src: str) -> str:
    path = epath.Path(src) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{src} has no config.json: not a transformers model directory")
    arch = (json.loads(path.read_text()).get("architectures") or [None])[0]
    if arch not in TWO_TOWER | TEXT_ONLY:
        raise InteropError(
            f"{src}: architecture {arch!r} cannot be imported; supported: "
            f"{sorted(TWO_TOWER | TEXT_ONLY)}"
        )
    return arch


def tower_configs(src: str) -> dict[str, dict[str, Any]]:
    """The vlax tower kwargs of a checkpoint: {"image", "text"} or {"text"}."""
    if architecture(src) in TEXT_ONLY:
        hf = json.loads((epath.Path(src) / "config.json").read_text())
        return {"text": hf_bert.vlax_text_config(hf)}
    model_config, _, _ = read_two_tower(src, params=False)
    return {k: v for k, v in model_config.items() if k in ("image", "text")}


def load_params(src: str) -> dict[str, Any]:
    """Host numpy params by top-level vlax name ("img", "txt", "log_temp", "logit_bias")."""
    if architecture(src) in TEXT_ONLY:
        _, params = hf_bert.import_bert(src)
        return {"txt": params}
    _, params, _ = read_two_tower(src)
    return params


def read_state(src: epath.Path) -> dict[str, np.ndarray]:
    """All tensors of a transformers directory (model.safetensors, or its sharded index)."""
    single, index = src / "model.safetensors", src / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(str(src / f)).items()}
    raise FileNotFoundError(
        f"{src} has no model.safetensors: save the model with "
        "`save_pretrained(dir, safe_serialization=True)` (vlax reads safetensors only)"
    )


def read_two_tower(src: str, *, params: bool = True) -> tuple[dict[str, Any], dict | None, int]:
    """A CLIPModel / SiglipModel directory -> (vlax model config, params, image size);
    `params=False` reads the config only."""
    src = epath.Path(src)
    config_path = src / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{src} has no config.json: not a transformers model directory")
    hf = json.loads(config_path.read_text())
    arch = (hf.get("architectures") or [None])[0]
    if arch not in _BY_ARCH:
        raise InteropError(
            f"{src}: architecture {arch!r} is not supported for two-tower import; "
            f"supported: {sorted(_BY_ARCH)} (BertModel: experiments.interop.hf_bert)"
        )
    target = _BY_ARCH[arch]
    try:
        model_config = target.vlax_config(hf)
    except ValueError as e:
        raise InteropError(f"{src}/config.json: {e}") from None
    size = target.image_size(hf)
    if not params:
        return model_config, None, size
    abstract = abstract_params(model_config, size)
    loaded = mapping.from_torch(
        read_state(src), target.rules(), abstract, ignore=target.IGNORE, where=f"import of {src}"
    )
    return model_config, loaded, size


def abstract_params(model_config: Mapping[str, Any], image_size: int):
    """Shapes of the contrastive model's params for `model_config` (nothing is computed)."""
    # Only shapes matter: the dense loss, one row, and no mesh (this may run inside a trainer's
    # mesh, for config.init.hf, whose sharding constraints a 1-row batch cannot meet).
    model = objectives.get_objective("contrastive")(**{**model_config, "loss_impl": "dense"})
    batch = {
        "image": jnp.zeros((1, image_size, image_size, 3)),
        "tokens": jnp.ones((1, model_config["text"]["max_len"]), jnp.int32),
    }
    with jax.set_mesh(None):  # unboxing applies constraints too
        abstract = jax.eval_shape(lambda r: model.init(r, batch), jax.random.key(0))
        return nn.unbox(abstract["params"])
