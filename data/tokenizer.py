"""SentencePiece tokenizer: train one from a caption corpus, or load an existing `.model`.

Special ids of models trained here (fixed so configs and checkpoints agree across runs):

    pad = 0, unk = 1, eos = 2, bos = 3

BOS gets a real id (rather than -1) because decoders (prefix LM, captioning) need a start
token; contrastive text towers simply never see it (`encode` adds only EOS by default).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, UNK_ID, EOS_ID, BOS_ID = 0, 1, 2, 3


class Tokenizer:
    """A SentencePiece model with fixed-length, padded batch encoding.

    Text is kept as is (no lowercasing); only SentencePiece's own normalisation applies.
    """

    def __init__(self, model_path: str):
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"SentencePiece model not found: {model_path}")
        self.model_path = model_path
        self._sp = spm.SentencePieceProcessor(model_file=model_path)

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
        for row, ids in enumerate(self._sp.encode(list(texts))):
            ids = prefix + ids[:room] + suffix
            out[row, : len(ids)] = ids
        return out

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
    model_prefix: str,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
) -> str:
    """Trains a SentencePiece model on `corpus` and writes `<model_prefix>.model`.

    Deterministic (single training thread, no sentence sampling). `vocab_size` is an upper
    bound (`hard_vocab_limit=False`) so tiny corpora still train. The model is written to a
    temporary file in the target directory and renamed into place, so a crash never leaves a
    half-written `.model` behind.

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
    path = model_prefix + ".model"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".model")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the model is shared with other readers.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def get_tokenizer(
    model_path: str,
    corpus_fn: Callable[[], Iterable[str]] | None = None,
    vocab_size: int = 1000,
    *,
    model_type: str = "unigram",
) -> Tokenizer:
    """Loads `model_path` (a `.model` file); if missing, trains it from `corpus_fn()` first."""
    if not model_path.endswith(".model"):
        raise ValueError(f"model_path must end in '.model', got {model_path!r}")
    if not os.path.exists(model_path):
        if corpus_fn is None:
            raise FileNotFoundError(
                f"No SentencePiece model at {model_path} and no corpus to train one from: "
                "pass corpus_fn (e.g. the training captions) or point to an existing .model."
            )
        prefix = model_path[: -len(".model")]
        train_sentencepiece(corpus_fn(), prefix, vocab_size, model_type=model_type)
    return Tokenizer(model_path)
