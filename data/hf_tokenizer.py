"""A Hugging Face `tokenizer.json` (the `tokenizers` library) behind vlax's tokenizer interface.

`HFTokenizer` offers what the pipeline and the trainer use of `data.tokenizer.Tokenizer`
(`model_path`, `vocab_size`, `pad_id`, `eos_id`, `bos_id`, `encode`, `decode`,
`token_counts`, `pieces`), so a pretrained text tower (BERT WordPiece, ...) gets exactly the ids it
was trained on. `data.tokenizer.get_tokenizer` returns one for a path ending in `.json`.

Special tokens come from the tokenizer's own post-processor, its "framing" of a single
sequence: for BERT `[CLS] text [SEP]`, i.e. a prefix `[CLS]` (= `bos_id`) and a suffix
`[SEP]` (= `eos_id`). How `encode`'s flags map onto it:

    add_eos=True   the suffix ([SEP]) ends the sequence, kept last through truncation
    add_eos=False  no suffix
    prefix         always added: it is part of the model's input format ([CLS])
    add_bos=True   requires the prefix to start with a BOS token (a ValueError if the
                   tokenizer has none); never adds a second one

so the defaults (`add_eos=True, add_bos=False`, what the pipeline calls) give
`[CLS] pieces [SEP] [PAD]...`, exactly what `transformers` feeds `BertModel`.
The file's own padding and truncation are switched off: lengths are managed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tokenizers

from data import paths

# Pad tokens looked up when the file has no padding section.
_PAD_TOKENS = ("[PAD]", "<pad>")


class HFTokenizer:
    """A `tokenizers.Tokenizer` with fixed-length, padded batch encoding (see module doc)."""

    def __init__(self, model_path: paths.PathLike):
        """Loads a `tokenizer.json`, local or remote (gs://...): its text is read via epath."""
        path = paths.as_path(model_path)
        if not path.exists():
            raise FileNotFoundError(
                f"Hugging Face tokenizer not found: {model_path} (a .json tokenizer is loaded, "
                "never trained)"
            )
        self.model_path = str(path)
        tok = tokenizers.Tokenizer.from_str(path.read_text())
        padding = tok.padding
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        if padding is not None:
            self._pad_id = int(padding["pad_id"])
        else:
            # As data.tokenizer.Tokenizer: 0 when there is no pad token (padding is masked).
            found = [tok.token_to_id(t) for t in _PAD_TOKENS if tok.token_to_id(t) is not None]
            self._pad_id = found[0] if found else 0
        self._prefix, self._suffix = self._framing()

    def _framing(self) -> tuple[list[int], list[int]]:
        """The special ids the post-processor puts before and after a single sequence."""
        probe = "a"
        plain = self._tok.encode(probe, add_special_tokens=False).ids
        framed = self._tok.encode(probe, add_special_tokens=True)
        special = framed.special_tokens_mask
        n_pre = next((i for i, s in enumerate(special) if not s), len(special))
        n_suf = next((i for i, s in enumerate(reversed(special)) if not s), 0)
        ids = framed.ids
        if ids[n_pre : len(ids) - n_suf] != plain:
            raise ValueError(
                f"{self.model_path}: the post-processor changes the text's ids, not only "
                "adding special tokens around them"
            )
        if n_suf > 1:
            # truncation_stats counts one EOS; a longer suffix would make it undercount.
            raise ValueError(f"{self.model_path}: more than one special token after the text")
        return ids[:n_pre], ids[len(ids) - n_suf :]

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def eos_id(self) -> int:
        """The token after the text ([SEP] for BERT); -1 when the framing has none."""
        return self._suffix[-1] if self._suffix else -1

    @property
    def bos_id(self) -> int:
        """The first token before the text ([CLS] for BERT); -1 when the framing has none."""
        return self._prefix[0] if self._prefix else -1

    def encode(
        self,
        texts: Sequence[str],
        max_len: int,
        *,
        add_eos: bool = True,
        add_bos: bool = False,
    ) -> np.ndarray:
        """Encodes strings to int32 [N, max_len]: prefix + pieces + suffix (if `add_eos`),
        right-padded with `pad_id`. Over-long texts lose pieces from the end; the prefix and
        suffix survive, so the suffix ([SEP]) is always last."""
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of strings, got a single str")
        if add_eos and not self._suffix:
            raise ValueError(f"{self.model_path} adds no token after the text: add_eos=False")
        if add_bos and not self._prefix:
            raise ValueError(f"{self.model_path} adds no token before the text: add_bos=False")
        suffix = self._suffix if add_eos else []
        room = max_len - len(self._prefix) - len(suffix)
        if room < 1:
            raise ValueError(f"max_len={max_len} leaves no room for text tokens")
        out = np.full((len(texts), max_len), self.pad_id, dtype=np.int32)
        for row, enc in enumerate(self._tok.encode_batch(list(texts), add_special_tokens=False)):
            ids = self._prefix + enc.ids[:room] + suffix
            out[row, : len(ids)] = ids
        return out

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """int64 [N]: the length of each text's `encode(..., add_eos=False)` uncut, i.e. its
        pieces plus the always-added prefix ([CLS]); `truncation_stats` adds the EOS."""
        if isinstance(texts, str):
            raise TypeError("token_counts expects a sequence of strings, got a single str")
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return np.array([len(e.ids) + len(self._prefix) for e in encodings], dtype=np.int64)

    def pieces(self, texts: Sequence[str]) -> list[list[int]]:
        """The piece ids of each text, uncut, without the framing ([CLS]/[SEP]) or padding."""
        if isinstance(texts, str):
            raise TypeError("pieces expects a sequence of strings, got a single str")
        return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Decodes [N, L] ids to N strings, stopping at the first EOS and skipping special
        tokens (pad, [CLS], ...)."""
        rows = []
        for row in np.asarray(ids).tolist():
            if self.eos_id >= 0 and self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            rows.append([int(t) for t in row if t != self.pad_id])
        return self._tok.decode_batch(rows, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.model_path!r}, vocab_size={self.vocab_size})"
