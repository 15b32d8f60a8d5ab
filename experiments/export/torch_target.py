"""`--format torch`: a contrastive (two-tower) or prefix_lm (SimVLM) run as the repo's plain
PyTorch modules.

Writes config.json, model.safetensors (fp32) and tokenizer.model into a directory that
`experiments.export.torch_models.load` turns into a `TwoTower` or a `PrefixLM` computing what
the vlax model computes (torch_models/files.py: the layout; two_tower.py / prefix_lm.py: the
inputs). Everything dispatches on the run's objective (`meta["objective"]`, recorded in
config.json); one name table per objective and model config (`rules`) serves export (`write`)
and import (`read`), scanned (stacked "blocks") or not.
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

from experiments.export.torch_models import config as config_lib
from experiments.export.torch_models import files, loading
from experiments.interop import mapping
from experiments.interop.mapping import Rule
from objectives.contrastive import TwoTower
from objectives.prefix_lm import PrefixLM

NAME = "torch"
OBJECTIVE = "contrastive"  # the objective of metadata that names none
OBJECTIVES = config_lib.OBJECTIVES


def _ln(v: str, t: str) -> list[Rule]:
    return [Rule(f"{v}/scale", f"{t}.weight"), Rule(f"{v}/bias", f"{t}.bias")]


def _dense(v: str, t: str, bias: bool = True) -> list[Rule]:
    return [Rule(f"{v}/kernel", f"{t}.weight", "dense")] + (
        [Rule(f"{v}/bias", f"{t}.bias")] if bias else []
    )


def _norm(v: str, t: str, norm_type: str) -> list[Rule]:
    """A LayerNorm (scale and bias) or an RMSNorm (scale only)."""
    return _ln(v, t) if norm_type == "layernorm" else [Rule(f"{v}/scale", f"{t}.weight")]


def _attention(v: str, t: str, bias: bool = True) -> list[Rule]:
    out = []
    for name in ("query", "key", "value"):
        out.append(Rule(f"{v}/{name}/kernel", f"{t}.{name}.weight", "heads_in"))
        if bias:
            out.append(Rule(f"{v}/{name}/bias", f"{t}.{name}.bias", "flatten"))
    out.append(Rule(f"{v}/out/kernel", f"{t}.out.weight", "heads_out"))
    return out + ([Rule(f"{v}/out/bias", f"{t}.out.bias")] if bias else [])


def _mlp(v: str, t: str) -> list[Rule]:
    return _dense(f"{v}/fc1", f"{t}.fc1") + _dense(f"{v}/fc2", f"{t}.fc2")


def _encoder(v: str, t: str, final_norm: bool) -> list[Rule]:
    """A layers.Encoder at vlax path `v` / torch path `t` (blocks unscanned)."""
    b, tb = f"{v}/block_{{i}}", f"{t}.blocks.{{i}}"
    rules = [
        *_ln(f"{b}/ln_1", f"{tb}.ln_1"),
        *_attention(f"{b}/attn", f"{tb}.attn"),
        *_ln(f"{b}/ln_2", f"{tb}.ln_2"),
        *_mlp(f"{b}/mlp", f"{tb}.mlp"),
    ]
    return rules + (_ln(f"{v}/encoder_norm", f"{t}.encoder_norm") if final_norm else [])


def _tower_common(p: str, cfg: Mapping[str, Any]) -> list[Rule]:
    """Encoder, MAP head and head rules of tower `p` ("img" or "txt")."""
    rules = _encoder(f"{p}/encoder", f"{p}.encoder", cfg["final_norm"])
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


def _vit(img: Mapping[str, Any]) -> list[Rule]:
    """The "img" ViT of a completed image config."""
    table = [Rule("img/embedding/kernel", "img.embedding.weight", "conv")]
    if img["patch_bias"]:
        table.append(Rule("img/embedding/bias", "img.embedding.bias"))
    if img["pool_type"] == "cls":
        table.append(Rule("img/cls", "img.cls"))
    if img["posemb"] == "learn":
        table.append(Rule("img/pos_embedding", "img.pos_embedding"))
    if img["ln_pre"]:
        table += _ln("img/ln_pre", "img.ln_pre")
    return table + _tower_common("img", img)


def _two_tower_rules(model_config: Mapping[str, Any]) -> list[Rule]:
    """The vlax <-> torch_models.TwoTower name table of one model config."""
    cfg = config_lib.complete_two_tower(model_config)
    txt = cfg["text"]
    table = _vit(cfg["image"])
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


def decoder_rules(decoder_config: Mapping[str, Any], v: str = "dec", t: str = "dec") -> list[Rule]:
    """A models.decoder.Decoder (fields of `decoder_config`, cross_attention included) at
    vlax path `v` <-> a torch_models.Decoder at torch path `t`."""
    cfg = config_lib.complete(decoder_config, config_lib.DECODER_DEFAULTS)
    b, tb = f"{v}/block_{{i}}", f"{t}.blocks.{{i}}"

    def norm(name: str) -> list[Rule]:
        return _norm(f"{b}/{name}", f"{tb}.{name}", cfg["norm_type"])

    table = [Rule(f"{v}/token_embedding/embedding", f"{t}.token_embedding.weight")]
    if cfg["posemb"] == "learn":
        table.append(Rule(f"{v}/pos_embedding", f"{t}.pos_embedding"))
    table += norm("ln_1") + _attention(f"{b}/attn", f"{tb}.attn", cfg["attn_bias"])
    if cfg["cross_attention"]:
        table += norm("ln_cross")
        table += _attention(f"{b}/cross_attn", f"{tb}.cross_attn", cfg["attn_bias"])
    table += norm("ln_2")
    if cfg["mlp_type"] == "swiglu":
        for name in ("gate", "up", "down"):
            table += _dense(f"{b}/mlp/{name}", f"{tb}.mlp.{name}", bias=False)
    else:
        table += _mlp(f"{b}/mlp", f"{tb}.mlp")
    table += _norm(f"{v}/decoder_norm", f"{t}.decoder_norm", cfg["norm_type"])
    if not cfg["tie_embeddings"]:
        table += _dense(f"{v}/lm_head", f"{t}.lm_head", bias=False)
    return table


def _prefix_lm_rules(model_config: Mapping[str, Any]) -> list[Rule]:
    """The vlax <-> torch_models.PrefixLM name table of one model config."""
    cfg = config_lib.complete_prefix_lm(model_config)
    cross = cfg["architecture"] == "encoder_decoder"
    table = _vit({**cfg["image"], "pool_type": "none", "num_classes": None})
    image_width = config_lib.sizes(cfg["image"])["width"]
    if image_width != config_lib.decoder_sizes(cfg["decoder"])["width"]:
        table += _dense("img_proj", "img_proj")
    if cross:
        table += [
            Rule("txt_embed/embedding", "txt_embed.weight"),
            Rule("txt_pos", "txt_pos"),
            *_encoder("encoder", "encoder", config_lib.ENCODER_FIXED["final_norm"]),
        ]
    return table + decoder_rules({**cfg["decoder"], "cross_attention": cross})


def rules(model_config: Mapping[str, Any], objective: str = OBJECTIVE) -> list[Rule]:
    """The vlax <-> torch_models name table of one model config of `objective`."""
    if objective == "prefix_lm":
        return _prefix_lm_rules(model_config)
    if objective == "contrastive":
        return _two_tower_rules(model_config)
    raise ValueError(f"objective {objective!r}: the torch target covers {list(OBJECTIVES)}.")


def _value_problems(where: str, cfg: Mapping[str, Any], allowed: Mapping[str, tuple]) -> list[str]:
    return [
        f"{where}.{field}={cfg[field]!r} has no torch mirror (known: {list(values)})."
        for field, values in allowed.items()
        if field in cfg and cfg[field] not in values
    ]


Group = tuple[str, Mapping[str, Any], Mapping[str, Any], Mapping[str, tuple]]


def _group_problems(groups: list[Group]) -> list[str]:
    """Unknown fields and unmirrored values of each (where, config, defaults, allowed)."""
    problems = []
    for where, cfg, defaults, allowed in groups:
        problems += [
            f"{where}.{field} is an option the torch modules do not mirror."
            for field in config_lib.unknown_fields(cfg, defaults)
        ]
        problems += _value_problems(where, cfg, allowed)
    return problems


def _two_tower_mismatches(model_config: Mapping[str, Any]) -> list[str]:
    top = {k: v for k, v in model_config.items() if k not in ("image", "text")}
    return _group_problems(
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


def _prefix_lm_mismatches(model_config: Mapping[str, Any]) -> list[str]:
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
    problems += _group_problems(
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
    if not problems:
        try:  # sizes vlax itself would refuse (a run cannot have them; a hand-made config can)
            cfg = config_lib.complete_prefix_lm(model_config)
            config_lib.decoder_sizes(cfg["decoder"])
            config_lib.sizes(cfg["image"])
        except ValueError as e:
            problems.append(f"model: {e}")
    return problems


def mismatches(model_config: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> list[str]:
    """One sentence per option of this run that the torch modules cannot mirror ([] = ok)."""
    if not model_config:
        return ["the checkpoint metadata holds no model config (a run older than format 2)."]
    objective = meta.get("objective", OBJECTIVE)
    if objective == "contrastive":
        problems = _two_tower_mismatches(model_config)
    elif objective == "prefix_lm":
        problems = _prefix_lm_mismatches(model_config)
    else:
        problems = [f"objective {objective!r}: the torch target covers {list(OBJECTIVES)} only."]
    data = meta.get("data") or {}
    missing = [k for k in ("image_size", "mean", "std", "max_len") if k not in data]
    if missing:
        problems.append(f"the checkpoint metadata's data description lacks {missing}.")
    return problems


def _complete(objective: str, model_config: Mapping[str, Any]) -> dict[str, Any]:
    if objective == "prefix_lm":
        return config_lib.complete_prefix_lm(model_config)
    return config_lib.complete_two_tower(model_config)


def _check_state(
    state: Mapping[str, np.ndarray], objective: str, cfg: Mapping[str, Any], size: int
) -> None:
    """The exported tensors are exactly the torch module's state dict (names and shapes)."""
    with torch.device("meta"):
        module = loading.MODULES[objective](cfg, size)
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
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
    (out_dir / files.TOKENIZER_FILE).write_bytes(data)
    return {**tok, "file": files.TOKENIZER_FILE}, f"copied tokenizer {src}."


def _config_notes(
    objective: str, model_config: Mapping[str, Any], cfg: Mapping[str, Any]
) -> list[str]:
    """Notes on what the export computes differently from training (precision) or ignores."""
    parts = {"image": "image tower"}
    parts.update({"text": "text tower"} if objective == "contrastive" else {"decoder": "decoder"})
    notes = [
        f"the {label} trained with {key}={cfg[part][key]}; the export computes in float32."
        for part, label in parts.items()
        for key in ("dtype", "matmul_dtype")
        if cfg[part].get(key) not in ("float32", None)
    ]
    if objective == "prefix_lm" and cfg["architecture"] == "encoder_decoder":
        ignored = sorted(set(model_config.get("encoder") or {}) - set(config_lib.ENCODER_DEFAULTS))
        if ignored:
            notes.append(
                f"model.encoder fields {ignored} are not read by vlax's PrefixLM (only "
                f"{list(config_lib.ENCODER_DEFAULTS)}): dropped, as in training."
            )
    return notes


def write(out_dir: epath.Path, params: Any, meta: Mapping[str, Any]) -> list[str]:
    """Writes config.json, model.safetensors (fp32) and tokenizer.model; returns notes.

    params: the checkpoint's params tree (host arrays, any float dtype, scanned or not).
    """
    problems = mismatches(meta.get("model_config"), meta)
    if problems:
        raise ValueError("cannot export to --format torch: " + " ".join(problems))
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objective = meta.get("objective", OBJECTIVE)
    cfg = _complete(objective, meta["model_config"])
    data = meta["data"]
    state = mapping.to_torch(params, rules(cfg, objective), where="torch export")
    _check_state(state, objective, cfg, data["image_size"])
    blob = safetensors_np.save(state, metadata={"format": "pt"})
    (out_dir / files.WEIGHTS_FILE).write_bytes(blob)
    dtypes = sorted({str(np.dtype(x.dtype)) for x in jax.tree.leaves(params)})
    notes = [
        f"wrote {len(state)} tensors ({sum(x.size for x in state.values()):,} values) "
        f"as float32 from {'/'.join(dtypes)} params."
    ]
    notes += _config_notes(objective, meta["model_config"], cfg)
    tok, note = _tokenizer(out_dir, meta.get("tokenizer"))
    notes.append(note)
    config = {
        "objective": objective,
        "model_config": cfg,
        "tokenizer": tok,
        **{k: data[k] for k in ("image_size", "mean", "std", "max_len")},
    }
    (out_dir / files.CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))
    return notes


_PLAIN = {
    "scan": False,
    "remat": False,
    "remat_policy": "full",
    "dtype": "float32",
    "matmul_dtype": None,
}


def _abstract_params(objective: str, cfg: Mapping[str, Any], image_size: int) -> Any:
    """Unscanned vlax param shapes of `cfg` (fp32 params; compute dtype does not matter)."""
    image = jnp.zeros((1, image_size, image_size, 3))
    if objective == "prefix_lm":
        model = PrefixLM(
            **{**cfg, "image": {**cfg["image"], **_PLAIN}, "decoder": {**cfg["decoder"], **_PLAIN}}
        )
        batch = {
            "image": image,
            "tokens": jnp.ones((1, 1), jnp.int32),
            "prefix_len": jnp.zeros((1,), jnp.int32),
            "has_image": jnp.ones((1,), bool),
        }
    else:
        model = TwoTower(
            **{**cfg, "image": {**cfg["image"], **_PLAIN}, "text": {**cfg["text"], **_PLAIN}}
        )
        batch = {"image": image, "tokens": jnp.ones((1, cfg["text"]["max_len"]), jnp.int32)}
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), batch))["params"]


def _scanned(objective: str, cfg: Mapping[str, Any]) -> list[str]:
    """The block scopes of `cfg` that trained with scan=True (stacked "blocks")."""
    if objective == "prefix_lm":
        scopes = {"img/encoder": cfg["image"]["scan"], "dec": cfg["decoder"]["scan"]}
    else:
        scopes = {"img/encoder": cfg["image"]["scan"], "txt/encoder": cfg["text"]["scan"]}
    return [scope for scope, scan in scopes.items() if scan]


def _rescan(params: dict, scope: str) -> dict:
    """Stacks "<scope>/block_{i}/..." back into "<scope>/blocks/..." [depth, ...] (the
    inverse of `mapping.unscan`) for blocks trained with scan=True."""
    flat, stacks = {}, {}
    block = re.compile(rf"^({re.escape(scope)})/block_(\d+)/(.*)$")
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
    config = json.loads((src / files.CONFIG_FILE).read_text())
    objective = config.get("objective", OBJECTIVE)
    cfg = _complete(objective, config["model_config"])
    state = safetensors_np.load((src / files.WEIGHTS_FILE).read_bytes())
    abstract = _abstract_params(objective, cfg, config["image_size"])
    params = mapping.from_torch(state, rules(cfg, objective), abstract, where=f"import {src}")
    for scope in _scanned(objective, cfg):
        params = _rescan(params, scope)
    return cfg, params
