"""Name-table pieces for the repo's torch modules (experiments/export/torch_models): each
function gives the `Rule`s of one vlax module at vlax path `v` and torch path `t`, so a
family's table reads as the composition of its modules. Blocks are unscanned
("block_{i}" <-> "blocks.{i}"); `mapping` unscans stacked params before matching.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.export.torch_models import config as config_lib
from experiments.interop.mapping import Rule


def layer_norm(v: str, t: str) -> list[Rule]:
    return [Rule(f"{v}/scale", f"{t}.weight"), Rule(f"{v}/bias", f"{t}.bias")]


def dense(v: str, t: str, bias: bool = True) -> list[Rule]:
    return [Rule(f"{v}/kernel", f"{t}.weight", "dense")] + (
        [Rule(f"{v}/bias", f"{t}.bias")] if bias else []
    )


def norm(v: str, t: str, norm_type: str) -> list[Rule]:
    """A LayerNorm (scale and bias) or an RMSNorm (scale only)."""
    return layer_norm(v, t) if norm_type == "layernorm" else [Rule(f"{v}/scale", f"{t}.weight")]


def attention(v: str, t: str, bias: bool = True) -> list[Rule]:
    out = []
    for name in ("query", "key", "value"):
        out.append(Rule(f"{v}/{name}/kernel", f"{t}.{name}.weight", "heads_in"))
        if bias:
            out.append(Rule(f"{v}/{name}/bias", f"{t}.{name}.bias", "flatten"))
    out.append(Rule(f"{v}/out/kernel", f"{t}.out.weight", "heads_out"))
    return out + ([Rule(f"{v}/out/bias", f"{t}.out.bias")] if bias else [])


def mlp(v: str, t: str) -> list[Rule]:
    return dense(f"{v}/fc1", f"{t}.fc1") + dense(f"{v}/fc2", f"{t}.fc2")


def encoder(v: str, t: str, final_norm: bool) -> list[Rule]:
    """A layers.Encoder (pre- or post-LN blocks: the same names)."""
    b, tb = f"{v}/block_{{i}}", f"{t}.blocks.{{i}}"
    rules = [
        *layer_norm(f"{b}/ln_1", f"{tb}.ln_1"),
        *attention(f"{b}/attn", f"{tb}.attn"),
        *layer_norm(f"{b}/ln_2", f"{tb}.ln_2"),
        *mlp(f"{b}/mlp", f"{tb}.mlp"),
    ]
    return rules + (layer_norm(f"{v}/encoder_norm", f"{t}.encoder_norm") if final_norm else [])


def tower_common(p: str, cfg: Mapping[str, Any]) -> list[Rule]:
    """Encoder, MAP head and head rules of tower `p` ("img" or "txt"), a completed config."""
    rules = encoder(f"{p}/encoder", f"{p}.encoder", cfg["final_norm"])
    if cfg["pool_type"] == "map":
        m, tm = f"{p}/map_head", f"{p}.map_head"
        rules += [
            Rule(f"{m}/probe", f"{tm}.probe"),
            *attention(f"{m}/attn", f"{tm}.attn"),
            *layer_norm(f"{m}/ln", f"{tm}.ln"),
            *mlp(f"{m}/mlp", f"{tm}.mlp"),
        ]
    if cfg["num_classes"] is not None:
        rules += dense(f"{p}/head", f"{p}.head", bias=cfg["head_bias"])
    return rules


def vit(img: Mapping[str, Any]) -> list[Rule]:
    """The "img" ViT of a completed image config."""
    table = [Rule("img/embedding/kernel", "img.embedding.weight", "conv")]
    if img["patch_bias"]:
        table.append(Rule("img/embedding/bias", "img.embedding.bias"))
    if img["pool_type"] == "cls":
        table.append(Rule("img/cls", "img.cls"))
    if img["posemb"] == "learn":
        table.append(Rule("img/pos_embedding", "img.pos_embedding"))
    if img["ln_pre"]:
        table += layer_norm("img/ln_pre", "img.ln_pre")
    return table + tower_common("img", img)


def decoder(decoder_config: Mapping[str, Any], v: str = "dec", t: str = "dec") -> list[Rule]:
    """A models.decoder.Decoder (fields of `decoder_config`, cross_attention included) at
    vlax path `v` <-> a torch_models.Decoder at torch path `t`."""
    cfg = config_lib.complete(decoder_config, config_lib.DECODER_DEFAULTS)
    b, tb = f"{v}/block_{{i}}", f"{t}.blocks.{{i}}"

    def block_norm(name: str) -> list[Rule]:
        return norm(f"{b}/{name}", f"{tb}.{name}", cfg["norm_type"])

    table = [Rule(f"{v}/token_embedding/embedding", f"{t}.token_embedding.weight")]
    if cfg["posemb"] == "learn":
        table.append(Rule(f"{v}/pos_embedding", f"{t}.pos_embedding"))
    table += block_norm("ln_1") + attention(f"{b}/attn", f"{tb}.attn", cfg["attn_bias"])
    if cfg["cross_attention"]:
        table += block_norm("ln_cross")
        table += attention(f"{b}/cross_attn", f"{tb}.cross_attn", cfg["attn_bias"])
    table += block_norm("ln_2")
    if cfg["mlp_type"] == "swiglu":
        for name in ("gate", "up", "down"):
            table += dense(f"{b}/mlp/{name}", f"{tb}.mlp.{name}", bias=False)
    else:
        table += mlp(f"{b}/mlp", f"{tb}.mlp")
    table += norm(f"{v}/decoder_norm", f"{t}.decoder_norm", cfg["norm_type"])
    if not cfg["tie_embeddings"]:
        table += dense(f"{v}/lm_head", f"{t}.lm_head", bias=False)
    return table
