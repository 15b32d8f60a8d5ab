"""The tokenizer files of an exported Hugging Face directory, from the run's tokenizer.

CLIP: a fast tokenizer (`tokenizer.json`) converted from the run's sentencepiece model (or
the run's own `tokenizer.json` when it used one), loaded by `AutoTokenizer` as a generic
fast tokenizer. SigLIP: the sentencepiece model itself as `spiece.model`, as
`SiglipTokenizer` expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from etils import epath

from experiments.export import hf_files, spm_fast


class TokenizerExportError(ValueError):
    """The run's tokenizer cannot be written in the requested form."""


def _special_tokens(proto) -> dict[str, str]:
    spec = proto.trainer_spec
    names = {
        "pad_token": spec.pad_id,
        "unk_token": spec.unk_id,
        "eos_token": spec.eos_id,
        "bos_token": spec.bos_id,
    }
    return {k: proto.pieces[i].piece for k, i in names.items() if i >= 0}


def write_fast(out: epath.Path, tokenizer: Mapping[str, Any], max_len: int) -> list[str]:
    """tokenizer.json + tokenizer_config.json; returns notes for the export log."""
    path = tokenizer["path"]
    if path.endswith(".json"):
        (out / "tokenizer.json").write_text(epath.Path(path).read_text())
        hf_files.write_json(
            out / "tokenizer_config.json",
            {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len},
        )
        return [f"tokenizer.json copied from {path}"]
    try:
        fast = spm_fast.fast_tokenizer(path, max_len=max_len)
    except spm_fast.ConversionError as e:
        return [f"no tokenizer written: {e}; tokenise with the run's {path} instead"]
    (out / "tokenizer.json").write_text(fast.to_str(pretty=True))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "padding_side": "right",
        "truncation_side": "right",
        **_special_tokens(spm_fast.load_proto(path)),
    }
    hf_files.write_json(out / "tokenizer_config.json", config)
    return [f"tokenizer.json converted from {path} (same ids, EOS appended, pads to {max_len})"]


def write_siglip(out: epath.Path, tokenizer: Mapping[str, Any], max_len: int) -> list[str]:
    """spiece.model + tokenizer_config.json for transformers' SiglipTokenizer."""
    path = tokenizer["path"]
    if path.endswith(".json"):
        raise TokenizerExportError(
            f"SiglipTokenizer reads a sentencepiece model; this run used {path}"
        )
    proto = spm_fast.load_proto(path)
    (out / "spiece.model").write_bytes(epath.Path(path).read_bytes())
    config = {
        "tokenizer_class": "SiglipTokenizer",
        "model_max_length": max_len,
        "do_lower_case": bool(tokenizer.get("lowercase", False)),
        **_special_tokens(proto),
    }
    config.pop("bos_token", None)  # SiglipTokenizer adds EOS only
    hf_files.write_json(out / "tokenizer_config.json", config)
    return [f"spiece.model copied from {path}"]
