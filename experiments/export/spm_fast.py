"""A `tokenizers` (Hugging Face fast tokenizer) copy of a vlax sentencepiece model.

The unigram pieces and scores, sentencepiece's own normalisation table (precompiled charsmap)
and its "▁" word-boundary convention are carried over, and EOS is appended as vlax's
`Tokenizer.encode` does, so `tokenizer.json` gives the same ids as the `.model` file (tested
on a corpus). Truncation keeps EOS as the last token, as vlax does.
"""

from __future__ import annotations

from etils import epath
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

UNIGRAM = 1  # sentencepiece TrainerSpec.ModelType


class ConversionError(ValueError):
    """The sentencepiece model uses a feature the fast tokenizer copy cannot reproduce."""


def load_proto(model_path: str) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(epath.Path(model_path).read_bytes())
    return proto


def fast_tokenizer(model_path: str, *, max_len: int) -> Tokenizer:
    """The `tokenizers.Tokenizer` equivalent of the sentencepiece model at `model_path`,
    padding and truncating to `max_len` tokens (EOS included)."""
    proto = load_proto(model_path)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != UNIGRAM:
        raise ConversionError(f"{model_path}: only unigram models convert (type {spec.model_type})")
    if spec.byte_fallback:
        raise ConversionError(f"{model_path}: byte_fallback models do not convert")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    tok = Tokenizer(models.Unigram(pieces, unk_id=spec.unk_id, byte_fallback=False))
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    scheme = "always" if norm.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    eos = proto.pieces[spec.eos_id].piece
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, spec.eos_id)]
    )
    pad = proto.pieces[max(spec.pad_id, 0)].piece
    tok.enable_padding(pad_id=max(spec.pad_id, 0), pad_token=pad, length=max_len)
    tok.enable_truncation(max_length=max_len)
    return tok
