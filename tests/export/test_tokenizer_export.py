"""Exported tokenizers give the run's token ids: the fast-tokenizer copy of a sentencepiece
model, and SiglipTokenizer over a canonicalising vlax tokenizer."""

import numpy as np
import pytest
from etils import epath

from data import shapes
from data import tokenizer as tokenizer_lib
from experiments.export import spm_fast, tokenizer_files

ODD_TEXTS = [
    "  a small red circle left of a large blue square  ",
    "A  Picture of anim!",
    "tab\tand\nnewline",
    "Ünïcödé ﬁ ligature ① full-width Ａ, and é/e\u0301",
    "",
    "a very long caption " * 6,
]


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    return [shapes.render_example(rng, image_size=32)["caption"] for _ in range(300)]


def _train(tmp_path, corpus, **flags):
    return tokenizer_lib.get_tokenizer(
        str(tmp_path / "tok.model"), lambda: corpus, vocab_size=64, **flags
    )


def test_fast_tokenizer_copy_gives_the_same_ids(tmp_path, corpus):
    tok = _train(tmp_path, corpus)
    fast = spm_fast.fast_tokenizer(tok.model_path, max_len=20)
    texts = corpus[:100] + ODD_TEXTS
    want = tok.encode(texts, 20)
    got = np.array([e.ids for e in fast.encode_batch(texts)])
    np.testing.assert_array_equal(got, want)


def test_written_fast_tokenizer_loads_in_transformers(tmp_path, corpus):
    import transformers

    tok = _train(tmp_path, corpus)
    out = epath.Path(tmp_path / "hf")
    out.mkdir()
    tokenizer_files.write_fast(out, {"path": tok.model_path}, max_len=16)
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    texts = corpus[:20] + ODD_TEXTS
    ids = hf(texts, padding="max_length", truncation=True, max_length=16)["input_ids"]
    np.testing.assert_array_equal(np.array(ids), tok.encode(texts, 16))
    assert hf.eos_token_id == tok.eos_id == tokenizer_lib.EOS_ID != 2


@pytest.mark.parametrize("lowercase", [False, True])
def test_siglip_tokenizer_matches_the_canonicalising_tokenizer(tmp_path, corpus, lowercase):
    import transformers

    tok = _train(tmp_path, corpus, canonicalize=True, lowercase=lowercase)
    out = epath.Path(tmp_path / "hf")
    out.mkdir()
    identity = {"path": tok.model_path, "lowercase": lowercase}
    tokenizer_files.write_siglip(out, identity, max_len=16)
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert type(hf).__name__ == "SiglipTokenizer"
    texts = corpus[:20] + ["a red circle.", "A Red, Circle!", "a {}."]
    ids = hf(texts, padding="max_length", truncation=True, max_length=16)["input_ids"]
    np.testing.assert_array_equal(np.array(ids), tok.encode(texts, 16))


def test_canonical_text_is_siglips():
    assert tokenizer_lib.canonical_text("  A Red,  Circle! ") == "A Red Circle"
    assert tokenizer_lib.canonical_text("A Red,  Circle!", lowercase=True) == "a red circle"
    with pytest.raises(ValueError, match="lowercase=True is part of canonicalize=True"):
        tokenizer_lib.Tokenizer.__init__(
            object.__new__(tokenizer_lib.Tokenizer), __file__, lowercase=True
        )
