"""SentencePiece tokenizer: train one from a caption corpus, or load an existing `.model`.

Special ids of models trained here (fixed so configs and checkpoints agree across runs):

    pad = 0, unk = 1, bos = 2, eos = 3

BOS gets a real id (rather than -1) because decoders (prefix LM, captioning) need a start
token; contrastive text towers simply never see it (`encode` adds only EOS by default).
EOS is not 2 because transformers' CLIP reads eos_token_id == 2 as its legacy rule (pool at
the largest token id), so an exported CLIPModel would pool at the wrong token.

`canonicalize=True` rewrites text before encoding as SigLIP / big_vision do (and
transformers' SiglipTokenizer): punctuation removed, whitespace collapsed, and with
`lowercase=True` lowercased; a tokenizer trained for such a run is trained on canonical text.
"""

from __future__ import annotations

import io
import re
import string
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import sentencepiece as spm

from data import paths

if TYPE_CHECKING:
    from data.hf_tokenizer import HFTokenizer

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonical_text(text: str, *, lowercase: bool = False) -> str:
    """SigLIP's text canonicalisation: [lowercase,] drop punctuation, collapse whitespace."""
    if lowercase:
        text = text.lower()
    return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()


class Tokenizer:
    """A SentencePiece model with fixed-length, padded batch encoding.

    Text is kept as is unless `canonicalize` (see the module docstring); SentencePiece's own
    normalisation always applies.
    """

    def __init__(
        self, model_path: paths.PathLike, *, canonicalize: bool = False, lowercase: bool = False
    ):
        """Loads a `.model` file, local or remote (gs://...): its bytes are read via epath."""
        path = paths.as_path(model_path)
        if not path.exists():
            raise FileNotFoundError(f"SentencePiece model not found: {model_path}")
        if lowercase and not canonicalize:
            raise ValueError("lowercase=True is part of canonicalize=True; set both")
        self.model_path = str(path)
        self.canonicalize, self.lowercase = canonicalize, lowercase
        # `model_file=` opens local files only; the serialized proto works for any path.
        self._sp = spm.SentencePieceProcessor(model_proto=path.read_bytes())

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        # Models without a pad piece (pad_id() == -1) are padded with 0, as big_vision does;
        # padding is masked out downstream so the collision with piece 0 is harmless.
        return max(self._sp.pad_id(), 0)

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    def encode(
        self,
        texts: Sequence[str],
        max_len: int,
        *,
        add_eos: bool = True,
        add_bos: bool = False,
    ) -> np.ndarray:
        """Encodes strings to int32 [N, max_len], right-padded with `pad_id`.

        Over-long texts are truncated; with `add_eos` the EOS token survives truncation as the
        last token, so EOS-pooling text towers always find it.
        """
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of strings, got a single str")
        if max_len < 1 + int(add_eos) + int(add_bos):
            raise ValueError(f"max_len={max_len} leaves no room for text tokens")
        if (add_eos and self.eos_id < 0) or (add_bos and self.bos_id < 0):
            raise ValueError(f"{self.model_path} has no EOS/BOS piece to add")
        out = np.full((len(texts), max_len), self.pad_id, dtype=np.int32)
        prefix = [self.bos_id] if add_bos else []
        suffix = [self.eos_id] if add_eos else []
        room = max_len - len(prefix) - len(suffix)
        for row, ids in enumerate(self._sp.encode(self._prepare(texts))):
            ids = prefix + ids[:room] + suffix
            out[row, : len(ids)] = ids
        return out

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Number of pieces of each text, int64 [N], without BOS/EOS and without truncation."""
        if isinstance(texts, str):
            raise TypeError("token_counts expects a sequence of strings, got a single str")
        return np.array([len(ids) for ids in self._sp.encode(self._prepare(texts))], np.int64)

    def pieces(self, texts: Sequence[str]) -> list[list[int]]:
        """The piece ids of each text, uncut and without BOS/EOS/padding (what generative
        tasks assemble their layouts from, e.g. question pieces + answer pieces + EOS)."""
        if isinstance(texts, str):
            raise TypeError("pieces expects a sequence of strings, got a single str")
        return [list(ids) for ids in self._sp.encode(self._prepare(texts))]

    def _prepare(self, texts: Sequence[str]) -> list[str]:
        if not self.canonicalize:
            return list(texts)
        return [canonical_text(t, lowercase=self.lowercase) for t in texts]

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Decodes [N, L] ids to N strings, stopping at the first EOS and skipping pad/BOS."""
        skip = {self.pad_id, self.bos_id}
        texts = []
        for row in np.asarray(ids).tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            texts.append(self._sp.decode([int(t) for t in row if t not in skip]))
        return texts

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size})"


def train_sentencepiece(
    corpus: Iterable[str],
    model_prefix: paths.PathLike,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
) -> str:
    """Trains a SentencePiece model on `corpus` and writes `<model_prefix>.model`.

    Deterministic (single training thread, no sentence sampling). `vocab_size` is an upper
    bound (`hard_vocab_limit=False`) so tiny corpora still train. `model_prefix` may be local
    or remote (gs://...). The model is written to a temporary file in the target directory
    and renamed into place, so a crash never leaves a half-written `.model` behind.

    Returns:
      The path of the written `.model` file.
    """
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    # Non-empty lines only: sentencepiece rejects empty sentences in some versions.
    sentences = (line for line in corpus if line and line.strip())
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences,
        model_writer=buffer,
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        eos_id=EOS_ID,
        bos_id=BOS_ID,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    data = buffer.getvalue()
    if not data:
        raise RuntimeError(f"sentencepiece training produced no model for {model_prefix}")
    path = paths.as_path(f"{model_prefix}.model")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the rename stays within one filesystem (atomic locally; on GCS a
    # rename is copy + delete of an object that only appears once fully written).
    tmp = path.parent / f".tmp_{uuid.uuid4().hex}_{path.name}"
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(path)


def get_tokenizer(
    model_path: paths.PathLike,
    corpus_fn: Callable[[], Iterable[str]] | None = None,
    vocab_size: int = 1000,
    *,
    model_type: str = "unigram",
    canonicalize: bool = False,
    lowercase: bool = False,
) -> Tokenizer | HFTokenizer:
    """Loads `model_path` (a `.model` file, local or gs://); if missing, trains it first.

    The training corpus is `corpus_fn()`, e.g. a source's `captions(limit)`. A path ending in
    `.json` is a Hugging Face `tokenizer.json` (a pretrained text tower's): it must exist and
    loads as a `data.hf_tokenizer.HFTokenizer`; `corpus_fn` and `vocab_size` are unused.
    `canonicalize`/`lowercase`: see the module docstring (sentencepiece models only).
    """
    model_path = str(model_path)
    if model_path.endswith(".json"):
        # Imported here: `tokenizers` is needed only by runs that use such a file.
        from data.hf_tokenizer import HFTokenizer

        if canonicalize or lowercase:
            raise ValueError(f"{model_path}: canonicalize/lowercase apply to .model files only")
        return HFTokenizer(model_path)
    if not model_path.endswith(".model"):
        raise ValueError(f"model_path must end in '.model' or '.json', got {model_path!r}")
    if not paths.as_path(model_path).exists():
        if corpus_fn is None:
            raise FileNotFoundError(
                f"No SentencePiece model at {model_path} and no corpus to train one from: "
                "pass corpus_fn (e.g. the training captions) or point to an existing .model."
            )
        prefix = model_path[: -len(".model")]
        corpus = corpus_fn()
        if canonicalize:
            corpus = (canonical_text(t, lowercase=lowercase) for t in corpus)
        train_sentencepiece(corpus, prefix, vocab_size, model_type=model_type)
    return Tokenizer(model_path, canonicalize=canonicalize, lowercase=lowercase)


def truncation_stats(
    tokenizer: Tokenizer, texts: Sequence[str], max_len: int, *, add_eos: bool = True
) -> dict[str, int]:
    """How many `texts` `tokenizer.encode(texts, max_len, add_eos=add_eos)` would cut.

    Returns:
      {"num_texts": N, "num_truncated": texts longer than max_len tokens (EOS included),
       "max_len_for_95pct": the smallest max_len, EOS included, that fits at least 95% of the
       texts uncut (0 when there are no texts)}.
    """
    lengths = np.sort(tokenizer.token_counts(texts) + int(add_eos))
    n = len(lengths)
    # The ceil(0.95 n)-th shortest length fits that many texts, and no smaller one does
    # (integer ceil: 0.95 * n in floats can land just above an integer).
    fits_95 = int(lengths[-(-95 * n // 100) - 1]) if n else 0
    return {
        "num_texts": n,
        "num_truncated": int(np.sum(lengths > max_len)),
        "max_len_for_95pct": fits_95,
    }
