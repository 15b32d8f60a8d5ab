"""`--format hf`: write a vlax two-tower run as the exact transformers class, or read one.

Targets: `hf_clip` (CLIPModel) and `hf_siglip` (SiglipModel). A model matching neither is
refused with each target's mismatches and the alternative (`--format torch`).
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
from experiments.export import hf_clip, hf_common, hf_siglip, mapping, tokenizer_files
from experiments.export.output import ExportError

TARGETS = (hf_clip, hf_siglip)
_BY_ARCH = {t.NAME: t for t in TARGETS}
_TOKENIZER_WRITERS = {
    hf_clip.NAME: tokenizer_files.write_fast,
    hf_siglip.NAME: tokenizer_files.write_siglip,
}
_PROCESSORS = {hf_clip.NAME: "CLIPImageProcessor", hf_siglip.NAME: "SiglipImageProcessor"}


def choose_target(meta: Mapping[str, Any]):
    """The transformers target matching the run exactly, or ExportError naming why none does."""
    if meta["objective"] != "contrastive":
        raise ExportError(
            f"--format hf has no target for objective {meta['objective']!r}; use --format torch"
        )
    found = {t.NAME: t.mismatches(meta["model_config"], meta) for t in TARGETS}
    exact = [t for t in TARGETS if not found[t.NAME]]
    if exact:
        return exact[0]
    lines = "\n".join(f"  {name}: " + "; ".join(problems) for name, problems in found.items())
    raise ExportError(
        f"This model has no exact transformers equivalent:\n{lines}\n"
        "Use --format torch for a numerically identical plain PyTorch model."
    )


def write(out: epath.Path, params, meta: Mapping[str, Any], target) -> list[str]:
    """Writes config.json, model.safetensors, tokenizer and image-processor files."""
    state = mapping.to_torch(params, target.rules(), where=f"export to {target.NAME}")
    notes = []
    if target is hf_clip:
        state = hf_clip.clamp_scale(state)
        notes.append("logit_scale exported clamped at log(100), as vlax's loss applies it")
    hf_common.write_json(out / "config.json", target.hf_config(meta["model_config"], meta))
    hf_common.save_safetensors(state, out / "model.safetensors")
    max_len = int(meta["data"]["max_len"])
    if meta.get("tokenizer"):
        notes += _TOKENIZER_WRITERS[target.NAME](out, meta["tokenizer"], max_len)
    else:
        notes.append("no tokenizer recorded in the checkpoint: none written")
    processor = hf_common.image_processor(_PROCESSORS[target.NAME], meta["data"])
    hf_common.write_json(out / "preprocessor_config.json", processor)
    return notes


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


def read(src: str, *, params: bool = True) -> tuple[dict[str, Any], dict | None, int]:
    """A CLIPModel / SiglipModel directory -> (vlax model config, params, image size);
    `params=False` reads the config only."""
    src = epath.Path(src)
    config_path = src / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{src} has no config.json: not a transformers model directory")
    hf = json.loads(config_path.read_text())
    arch = (hf.get("architectures") or [None])[0]
    if arch not in _BY_ARCH:
        raise ExportError(
            f"{src}: architecture {arch!r} is not supported for two-tower import; "
            f"supported: {sorted(_BY_ARCH)} (BertModel: experiments.export.hf_bert)"
        )
    target = _BY_ARCH[arch]
    try:
        model_config = target.vlax_config(hf)
    except ValueError as e:
        raise ExportError(f"{src}/config.json: {e}") from None
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
