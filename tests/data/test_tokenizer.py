"""Tests for data/tokenizer.py: SentencePiece training, loading, encoding and decoding."""

import os
import pathlib
import random

import numpy as np
import pytest
from etils import epath

from data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    get_tokenizer,
    train_sentencepiece,
    truncation_stats,
)


def make_captions(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    objects = ["cat", "dog", "red ball", "blue cube", "green tree", "Car", "person", "bird"]
    relations = ["left of", "right of", "above", "below", "next to"]
    return [
        f"a {rng.choice(objects)} {rng.choice(relations)} the {rng.choice(objects)}."
        for _ in range(n)
    ]


def length_of(row: np.ndarray) -> int:
    return int(np.argmax(row == EOS_ID))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = train_sentencepiece(make_captions(), str(tmp_path_factory.mktemp("spm") / "t"), 500)
    return Tokenizer(path)


def test_special_ids(tokenizer):
    # EOS is 3, BOS 2 (data/tokenizer.py: transformers reads a CLIP eos_token_id of 2 as legacy).
    assert (tokenizer.pad_id, UNK_ID, tokenizer.eos_id, tokenizer.bos_id) == (0, 1, 3, 2)
    assert (PAD_ID, EOS_ID, BOS_ID) == (0, 3, 2)
    assert 10 < tokenizer.vocab_size <= 500  # hard_vocab_limit=False: tiny corpus, small vocab


def test_round_trip_and_case_kept(tokenizer):
    texts = make_captions(20, seed=1)
    ids = tokenizer.encode(texts, 32)
    assert ids.shape == (20, 32) and ids.dtype == np.int32
    assert tokenizer.decode(ids) == texts
    assert tokenizer.decode(tokenizer.encode(["a Car above the cat."], 32)) == [
        "a Car above the cat."
    ]


def test_padding_and_eos(tokenizer):
    ids = tokenizer.encode(["a cat.", "a red ball right of the green tree."], 32)
    for row in ids:
        length = length_of(row)
        assert row[length] == EOS_ID and length > 0
        assert np.all(row[length + 1 :] == PAD_ID)
        assert np.all(row[:length] > BOS_ID)  # only real pieces before EOS
    no_eos = tokenizer.encode(["a cat."], 32, add_eos=False)
    assert EOS_ID not in no_eos
    np.testing.assert_array_equal(no_eos[0, : length_of(ids[0])], ids[0, : length_of(ids[0])])
    with_bos = tokenizer.encode(["a cat."], 32, add_bos=True)
    assert with_bos[0, 0] == BOS_ID
    np.testing.assert_array_equal(with_bos[0, 1:], ids[0, :-1])


def test_truncation_keeps_eos_last(tokenizer):
    text = "a red ball right of the green tree next to the blue cube."
    full = tokenizer.encode([text], 64)[0]
    n = length_of(full)
    assert n > 6
    short = tokenizer.encode([text], 6)[0]
    np.testing.assert_array_equal(short, np.append(full[:5], EOS_ID))
    plain = tokenizer.encode([text], 6, add_eos=False)[0]
    np.testing.assert_array_equal(plain, full[:6])
    with pytest.raises(TypeError, match="sequence of strings"):
        tokenizer.encode(text, 6)


def test_decode_stops_at_eos(tokenizer):
    ids = tokenizer.encode(["a cat.", "a dog."], 16)
    ids[0, length_of(ids[0]) + 1] = ids[1, 0]  # junk after EOS must be ignored
    assert tokenizer.decode(ids) == ["a cat.", "a dog."]


def test_training_is_deterministic_and_bpe_works(tmp_path, other_process):
    corpus = make_captions(100)
    a = train_sentencepiece(corpus, str(tmp_path / "a"), 200)
    assert a == str(tmp_path / "a.model")
    # Every host trains its own copy when none is saved: another process, fed an iterator
    # rather than a list, must write the same model byte for byte.
    other_process(
        "from data.tokenizer import train_sentencepiece\n"
        "from tests.data.test_tokenizer import make_captions\n"
        f"train_sentencepiece(iter(make_captions(100)), {str(tmp_path / 'b')!r}, 200)\n"
    )
    assert pathlib.Path(a).read_bytes() == (tmp_path / "b.model").read_bytes()
    bpe = Tokenizer(train_sentencepiece(corpus, str(tmp_path / "c"), 60, model_type="bpe"))
    assert bpe.decode(bpe.encode(corpus[:5], 40)) == corpus[:5]
    with pytest.raises(ValueError, match="model_type"):
        train_sentencepiece(corpus, str(tmp_path / "d"), 60, model_type="word-level")


def test_get_tokenizer_missing_trains_then_loads(tmp_path):
    path = str(tmp_path / "sub" / "tok.model")
    with pytest.raises(FileNotFoundError, match="corpus_fn"):
        get_tokenizer(path)
    tok = get_tokenizer(path, corpus_fn=lambda: make_captions(100), vocab_size=200)
    assert os.path.exists(path) and tok.decode(tok.encode(["a cat."], 8)) == ["a cat."]

    def no_corpus():
        raise AssertionError("an existing model must be loaded, not retrained")

    again = get_tokenizer(path, corpus_fn=no_corpus)
    np.testing.assert_array_equal(again.encode(["a dog."], 8), tok.encode(["a dog."], 8))
    with pytest.raises(FileNotFoundError):
        Tokenizer(str(tmp_path / "nope.model"))


def test_failed_training_leaves_no_files(tmp_path, monkeypatch):
    def broken_corpus():
        yield from make_captions(50)
        raise RuntimeError("corpus read failed")

    with pytest.raises(RuntimeError, match="corpus read failed"):
        train_sentencepiece(broken_corpus(), str(tmp_path / "x"), 100)
    assert os.listdir(tmp_path) == []

    # A crash while writing (here: at the final rename) must not leave a partial model.
    def failing_replace(self, target):
        raise OSError("disk full")

    monkeypatch.setattr(type(epath.Path(tmp_path)), "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        train_sentencepiece(make_captions(50), str(tmp_path / "y"), 100)
    assert os.listdir(tmp_path) == []


def test_train_and_load_on_gcs(gcs):
    # Written and read through epath only: sentencepiece itself opens local files only.
    prefix = gcs / "tokenizers" / "caps"
    path = train_sentencepiece(make_captions(100), str(prefix), 200)
    assert path == f"{prefix}.model"
    assert sorted(p.name for p in (gcs / "tokenizers").iterdir()) == ["caps.model"]  # no temp
    tok = Tokenizer(path)
    assert tok.model_path == path and tok.decode(tok.encode(["a cat."], 8)) == ["a cat."]

    lazy = str(gcs / "other" / "tok.model")
    trained = get_tokenizer(lazy, corpus_fn=lambda: make_captions(100), vocab_size=200)
    assert (gcs / "other" / "tok.model").exists()

    def no_corpus():
        raise AssertionError("an existing model must be loaded, not retrained")

    again = get_tokenizer(lazy, corpus_fn=no_corpus)
    np.testing.assert_array_equal(again.encode(["a dog."], 8), trained.encode(["a dog."], 8))
    with pytest.raises(FileNotFoundError):
        Tokenizer(str(gcs / "nope.model"))


def test_truncation_stats(tokenizer):
    texts = make_captions(40, seed=2) + ["a red ball right of the green tree next to the cat."]
    counts = tokenizer.token_counts(texts)
    lengths = counts + 1  # EOS
    max_len = int(np.median(lengths))
    stats = truncation_stats(tokenizer, texts, max_len)
    assert stats["num_texts"] == len(texts)
    assert stats["num_truncated"] == int(np.sum(lengths > max_len)) > 0
    # Cross-check against encode: a text is cut iff its EOS row has no padding left over.
    fit = stats["max_len_for_95pct"]
    uncut = np.array([tokenizer.decode(tokenizer.encode([t], fit))[0] == t for t in texts])
    assert uncut.mean() >= 0.95
    shorter = np.array([tokenizer.decode(tokenizer.encode([t], fit - 1))[0] == t for t in texts])
    assert shorter.mean() < 0.95
    no_eos = truncation_stats(tokenizer, texts, max_len, add_eos=False)
    assert no_eos["max_len_for_95pct"] == fit - 1
    assert no_eos["num_truncated"] == int(np.sum(counts > max_len))
    assert truncation_stats(tokenizer, [], 8) == {
        "num_texts": 0,
        "num_truncated": 0,
        "max_len_for_95pct": 0,
    }


def test_truncation_stats_95pct_boundary(tokenizer):
    # 19 one-piece texts and one long one: 95% of 20 is 19 texts, so 2 tokens (piece + EOS).
    short = tokenizer.token_counts(["a"])[0]
    long_text = "a red ball right of the green tree next to the blue cube."
    stats = truncation_stats(tokenizer, ["a"] * 19 + [long_text], 64)
    assert stats == {"num_texts": 20, "num_truncated": 0, "max_len_for_95pct": short + 1}


def test_pieces_are_encode_without_specials(tokenizer):
    texts = make_captions(10, seed=3) + [""]
    pieces = tokenizer.pieces(texts)
    encoded = tokenizer.encode(texts, 64)
    for ids, row in zip(pieces, encoded, strict=True):
        assert row[: len(ids) + 1].tolist() == ids + [EOS_ID] and EOS_ID not in ids
    assert pieces[-1] == [] and tokenizer.pieces(["a red ball"])[0] == pieces_of(
        tokenizer, "a red ball"
    )
    with pytest.raises(TypeError, match="single str"):
        tokenizer.pieces("a red ball")


def pieces_of(tokenizer, text: str) -> list[int]:
    return tokenizer.encode([text], 64, add_eos=False)[0][
        : tokenizer.token_counts([text])[0]
    ].tolist()
