"""`--format torch`: any two-tower contrastive run as the repo's plain PyTorch modules.

Writes config.json, model.safetensors (fp32) and tokenizer.model into a directory that
`experiments.export.torch_models.load` turns into a `TwoTower` computing what the vlax model
computes (see torch_models/two_tower.py for the layout and the inputs). One name table per
model config (`rules`) serves export (`write`) and import (`read`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from etils import epath
from safetensors import numpy as safetensors_np

from experiments.export import mapping
from experiments.export.mapping import Rule
from experiments.export.torch_models import config as config_lib
from experiments.export.torch_models import two_tower
from objectives.contrastive import TwoTower

NAME = "torch"
OBJECTIVE = "contrastive"


def _ln(v: str, t: str) -> list[Rule]:
    return [Rule(f"{v}/scale", f"{t}.weight"), Rule(f"{v}/bias", f"{t}.bias")]


def _dense(v: str, t: str, bias: bool = True) -> list[Rule]:
    return [Rule(f"{v}/kernel", f"{t}.weight", "dense")] + (
        [Rule(f"{v}/bias", f"{t}.bias")] if bias else []
    )


def _attention(v: str, t: str) -> list[Rule]:
    out = [
        rule
        for name in ("query", "key", "value")
        for rule in (
            Rule(f"{v}/{name}/kernel", f"{t}.{name}.weight", "heads_in"),
            Rule(f"{v}/{name}/bias", f"{t}.{name}.bias", "flatten"),
        )
    ]
    return out + [
        Rule(f"{v}/out/kernel", f"{t}.out.weight", "heads_out"),
        Rule(f"{v}/out/bias", f"{t}.out.bias"),
    ]


def _mlp(v: str, t: str) -> list[Rule]:
    return _dense(f"{v}/fc1", f"{t}.fc1") + _dense(f"{v}/fc2", f"{t}.fc2")


def _tower_common(p: str, cfg: Mapping[str, Any]) -> list[Rule]:
    """Encoder, MAP head and head rules of tower `p` ("img" or "txt")."""
    b, tb = f"{p}/encoder/block_{{i}}", f"{p}.encoder.blocks.{{i}}"
    rules = [
        *_ln(f"{b}/ln_1", f"{tb}.ln_1"),
        *_attention(f"{b}/attn", f"{tb}.attn"),
        *_ln(f"{b}/ln_2", f"{tb}.ln_2"),
        *_mlp(f"{b}/mlp", f"{tb}.mlp"),
    ]
    if cfg["final_norm"]:
        rules += _ln(f"{p}/encoder/encoder_norm", f"{p}.encoder.encoder_norm")
    if cfg["pool_type"] == "map":
        m, tm = f"{p}/map_head", f"{p}.map_head"
        rules += [
            Rule(f"{m}/probe", f"{tm}.probe"),
            *_attention(f"{m}/attn", f"{tm}.attn"),
            *_ln(f"{m}/ln", f"{tm}.ln"),
            *_mlp(f"{m}/mlp", f"{tm}.mlp"),
        ]
    if cfg["num_classes"] is not None:
        rules += _dense(f"{p}/head", f"{p}.head", bias=cfg["head_bias"])
    return rules


def rules(model_config: Mapping[str, Any]) -> list[Rule]:
    """The vlax <-> torch_models.TwoTower name table of one model config."""
    cfg = config_lib.complete_two_tower(model_config)
    img, txt = cfg["image"], cfg["text"]
    table = [Rule("img/embedding/kernel", "img.embedding.weight", "conv")]
    if img["patch_bias"]:
        table.append(Rule("img/embedding/bias", "img.embedding.bias"))
    if img["pool_type"] == "cls":
        table.append(Rule("img/cls", "img.cls"))
    if img["posemb"] == "learn":
        table.append(Rule("img/pos_embedding", "img.pos_embedding"))
    if img["ln_pre"]:
        table += _ln("img/ln_pre", "img.ln_pre")
    table += _tower_common("img", img)
    table += [
        Rule("txt/token_embedding/embedding", "txt.token_embedding.weight"),
        Rule("txt/pos_embedding", "txt.pos_embedding"),
    ]
    if txt["type_vocab_size"] > 0:
        table.append(Rule("txt/type_embedding/embedding", "txt.type_embedding.weight"))
    if txt["embed_norm"]:
        table += _ln("txt/embedding_norm", "txt.embedding_norm")
    table += _tower_common("txt", txt)
    table.append(Rule("log_temp", "log_temp"))
    if cfg["loss"] == "sigmoid":
        table.append(Rule("logit_bias", "logit_bias"))
    return table


def _value_problems(where: str, cfg: Mapping[str, Any], allowed: Mapping[str, tuple]) -> list[str]:
    return [
        f"{where}.{field}={cfg[field]!r} has no torch mirror (known: {list(values)})."
        for field, values in allowed.items()
        if field in cfg and cfg[field] not in values
    ]


def mismatches(model_config: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> list[str]:
    """One sentence per option of this run that the torch modules cannot mirror ([] = ok)."""
    if not model_config:
        return ["the checkpoint metadata holds no model config (a run older than format 2)."]
    problems = []
    if meta.get("objective", OBJECTIVE) != OBJECTIVE:
        problems.append(f"objective {meta['objective']!r}: the torch target is two-tower only.")
    top = {k: v for k, v in model_config.items() if k not in ("image", "text")}
    groups = [
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
    for where, cfg, defaults, allowed in groups:
        problems += [
            f"{where}.{field} is an option the torch modules do not mirror."
            for field in config_lib.unknown_fields(cfg, defaults)
        ]
        problems += _value_problems(where, cfg, allowed)
    data = meta.get("data") or {}
    missing = [k for k in ("image_size", "mean", "std", "max_len") if k not in data]
    if missing:
        problems.append(f"the checkpoint metadata's data description lacks {missing}.")
    return problems


def _check_state(state: Mapping[str, np.ndarray], cfg: Mapping[str, Any], size: int) -> None:
    """The exported tensors are exactly the torch module's state dict (names and shapes)."""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in two_tower.TwoTower(cfg, size).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))
        raise mapping.MappingError(f"torch export: tensors differ from the module's: {diff[:6]}")


def _tokenizer(out_dir: epath.Path, tok: Mapping[str, Any] | None) -> tuple[dict | None, str]:
    """Copies the run's tokenizer file; returns (its config entry, a note)."""
    if not tok or not tok.get("path"):
        return tok, "the run recorded no tokenizer file: none copied."
    src = epath.Path(tok["path"])
    if not src.exists():
        return dict(tok), f"tokenizer {src} not found: not copied (copy it by hand)."
    data = src.read_bytes()
    if tok.get("sha256") and hashlib.sha256(data).hexdigest() != tok["sha256"]:
        raise ValueError(
            f"{src} is not the tokenizer the run trained with (its sha256 differs from the "
            "checkpoint metadata's): restore the original file before exporting."
        )
    (out_dir / two_tower.TOKENIZER_FILE).write_bytes(data)
    return {**tok, "file": two_tower.TOKENIZER_FILE}, f"copied tokenizer {src}."


def write(out_dir: epath.Path, params: Any, meta: Mapping[str, Any]) -> list[str]:
    """Writes config.json, model.safetensors (fp32) and tokenizer.model; returns notes.

    params: the checkpoint's params tree (host arrays, any float dtype, scanned or not).
    """
    problems = mismatches(meta.get("model_config"), meta)
    if problems:
        raise ValueError("cannot export to --format torch: " + " ".join(problems))
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = config_lib.complete_two_tower(meta["model_config"])
    data = meta["data"]
    state = mapping.to_torch(params, rules(cfg), where="torch export")
    _check_state(state, cfg, data["image_size"])
    blob = safetensors_np.save(state, metadata={"format": "pt"})
    (out_dir / two_tower.WEIGHTS_FILE).write_bytes(blob)
    dtypes = sorted({str(np.dtype(x.dtype)) for x in jax.tree.leaves(params)})
    notes = [
        f"wrote {len(state)} tensors ({sum(x.size for x in state.values()):,} values) "
        f"as float32 from {'/'.join(dtypes)} params."
    ]
    for tower in ("image", "text"):
        if cfg[tower]["dtype"] not in ("float32", None):
            notes.append(
                f"the {tower} tower trained with dtype={cfg[tower]['dtype']}; the "
                "export computes in float32."
            )
    tok, note = _tokenizer(out_dir, meta.get("tokenizer"))
    notes.append(note)
    config = {
        "model_config": cfg,
        "tokenizer": tok,
        **{k: data[k] for k in ("image_size", "mean", "std", "max_len")},
    }
    (out_dir / two_tower.CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))
    return notes


def _abstract_params(cfg: Mapping[str, Any], image_size: int) -> Any:
    """Unscanned vlax param shapes of `cfg` (fp32 params; compute dtype does not matter)."""
    plain = {"scan": False, "remat": False, "dtype": "float32"}
    model = TwoTower(
        **{**cfg, "image": {**cfg["image"], **plain}, "text": {**cfg["text"], **plain}}
    )
    batch = {
        "image": jnp.zeros((1, image_size, image_size, 3)),
        "tokens": jnp.ones((1, cfg["text"]["max_len"]), jnp.int32),
    }
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), batch))["params"]


def _rescan(params: dict, tower: str) -> dict:
    """Stacks "<tower>/encoder/block_{i}/..." back into "<tower>/encoder/blocks/..." [depth, ...]
    (the inverse of `mapping.unscan`) for a tower trained with scan=True."""
    flat, stacks = {}, {}
    block = re.compile(rf"^({tower}/encoder)/block_(\d+)/(.*)$")
    for path, x in mapping.flatten_params(params).items():
        m = block.match(path)
        if m:
            stacks.setdefault(f"{m[1]}/blocks/{m[3]}", {})[int(m[2])] = x
        else:
            flat[path] = x
    for path, layers in stacks.items():
        flat[path] = np.stack([layers[i] for i in range(len(layers))])
    return mapping.unflatten_params(flat)


def read(src_dir: str | epath.Path) -> tuple[dict, dict]:
    """(model_config, vlax params tree of numpy fp32 arrays) of an exported directory."""
    src = epath.Path(src_dir)
    config = json.loads((src / two_tower.CONFIG_FILE).read_text())
    cfg = config_lib.complete_two_tower(config["model_config"])
    state = safetensors_np.load((src / two_tower.WEIGHTS_FILE).read_bytes())
    params = mapping.from_torch(
        state, rules(cfg), _abstract_params(cfg, config["image_size"]), where=f"import {src}"
    )
    for tower, prefix in (("image", "img"), ("text", "txt")):
        if cfg[tower]["scan"]:
            params = _rescan(params, prefix)
    return cfg, params
