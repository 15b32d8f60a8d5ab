"""Text metrics: CIDEr-D, BLEU-4 and VQA accuracy on hand-built cases of known value."""

import math

import pytest

from experiments.evaluators import text_metrics as tm

# ---------------------------------------------------------------- tokenisation


def test_caption_tokens_lowercases_and_strips_punctuation():
    assert tm.caption_tokens("A Dog's  black-and-white ball, don't!") == (
        "a dogs black and white ball dont"
    )
    assert tm.caption_tokens("end.Start") == "end start"
    assert tm.caption_tokens(" ... ") == ""


# ---------------------------------------------------------------- BLEU-4


def test_bleu4_exact_match_is_one_and_disjoint_is_zero():
    refs = [["a red circle on the left"], ["two blue squares above a triangle"]]
    cands = ["A red circle on the left.", "two blue squares above a triangle"]
    assert tm.bleu4(cands, refs) == pytest.approx(1.0, abs=1e-8)
    assert tm.bleu4(["green stars below nothing"] * 2, refs) == pytest.approx(0.0, abs=1e-12)


def test_bleu4_by_hand():
    # Candidate (6 words) against one reference (7 words): clipped n-gram precisions
    # 6/6, 4/5 ("the grass" misses), 3/4, 2/3; brevity penalty exp(1 - 7/6).
    cand = ["a dog runs on the grass"]
    refs = [["a dog runs on the green grass"]]
    want = (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25 * math.exp(1 - 7 / 6)
    assert tm.bleu4(cand, refs) == pytest.approx(want, rel=1e-8)
    # The closest reference length sets the brevity penalty: a 6-word reference removes it.
    refs2 = [["a dog runs on the green grass", "one dog runs on the grass"]]
    assert tm.bleu4(cand, refs2) == pytest.approx(1.0, abs=1e-8)


def test_bleu4_is_corpus_level():
    # Counts pool over sentences: 2 exact 4-word matches and one miss is not the mean of
    # sentence scores (which would be 2/3). Precisions: 8/12, 6/9, 4/6, 2/3; lengths match.
    refs = [["a b c d"], ["e f g h"], ["i j k l"]]
    cands = ["a b c d", "e f g h", "w x y z"]
    assert tm.bleu4(cands, refs) == pytest.approx((2 / 3 * 2 / 3 * 2 / 3 * 2 / 3) ** 0.25)


# ---------------------------------------------------------------- CIDEr-D

# Two images, references "a cat" and "a dog": N = 2, so IDF = log 2 - log df: "a" (in both)
# has IDF 0, every other n-gram log 2. Trigram and 4-gram vectors are empty (score 0), so a
# perfect caption scores 10 * mean(1, 1, 0, 0) = 5.
TWO = [["a cat"], ["a dog"]]


def test_cider_identical_two_word_captions_score_five():
    assert tm.cider_d(["a cat", "a dog"], TWO) == pytest.approx(5.0, abs=1e-9)


def test_cider_identical_long_distinct_captions_score_ten():
    refs = [
        ["a red circle left of a blue square"],
        ["two green triangles above one star"],
        ["a small yellow star in the corner"],
    ]
    assert tm.cider_d([r[0] for r in refs], refs) == pytest.approx(10.0, abs=1e-9)


def test_cider_length_penalty_sigma_six():
    # "cat" vs "a cat": unigram cosine 1 ("a" has IDF 0), no bigram; the length difference
    # (bigram count 0 vs 1) gives the Gaussian penalty exp(-1 / (2 * 6^2)).
    got = tm.cider_d(["cat", "a dog"], TWO)
    assert got == pytest.approx((10 * 1 / 4 * math.exp(-1 / 72) + 5.0) / 2, rel=1e-9)


def test_cider_clips_repeated_words():
    # "cat cat cat": TF 3 for "cat", the reference's TF is 1; the clipped numerator
    # min(3g, g) * g over norms 3g * g gives 1/3 (unclipped it would be 1). The bigram
    # "cat cat" is not in the reference: 0. Length penalty: 2 bigrams vs 1.
    got = tm.cider_d(["cat cat cat", "a dog"], TWO)
    assert got == pytest.approx((10 * (1 / 3) / 4 * math.exp(-1 / 72) + 5.0) / 2, rel=1e-9)


def test_cider_averages_over_references_and_orders_candidates():
    refs = [["a cat sits", "a cat sleeps"], ["a dog runs", "a dog barks"]]
    perfect_one = tm.cider_d(["a cat sits", "a dog runs"], refs)
    partial = tm.cider_d(["a cat", "a dog"], refs)
    wrong = tm.cider_d(["a dog runs", "a cat sits"], refs)
    assert perfect_one > partial > wrong == 0.0
    # A candidate equal to one of two references cannot score as much as a perfect single ref.
    assert perfect_one < tm.cider_d(["a cat sits", "a dog runs"], [[r[0]] for r in refs])


def test_cider_degenerate_corpora():
    assert tm.cider_d(["a cat"], [["a cat"]]) == 0.0  # one image: every IDF is log 1 = 0
    assert tm.cider_d(["", ""], [[""], ["..."]]) == 0.0  # no reference n-grams at all


def test_metrics_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="2 candidates but 1 reference"):
        tm.cider_d(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="non-empty list"):
        tm.bleu4(["a"], [[]])
    with pytest.raises(ValueError, match="non-empty list"):
        tm.bleu4(["a"], ["a cat"])
    with pytest.raises(TypeError, match="not one string"):
        tm.cider_d("a cat", [["a cat"]] * 5)
    with pytest.raises(ValueError, match="no candidates"):
        tm.bleu4([], [])


# ---------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    "answer, want",
    [
        ("Two", "2"),
        ("a dog.", "dog"),
        ("The  Red-Car", "red car"),
        ("it's", "it's"),
        ("its", "its"),
        ("dont", "don't"),
        ("Yes, it is.", "yes it is"),
        ("100,978", "100978"),
        ("3.5 Meters!", "3.5 meters"),
        ("2:50 pm", "2:50 pm"),
        ("girl's", "girl's"),
        ("u.s.a.", "usa"),
        ("an apple", "apple"),
        ("none", "0"),
        ("ten\n", "10"),
        ("  ", ""),
    ],
)
def test_vqa_normalize(answer, want):
    assert tm.vqa_normalize(answer) == want


def test_vqa_accuracy_single_reference_is_exact_match():
    assert tm.vqa_accuracy("Two.", ["2"]) == 1.0
    assert tm.vqa_accuracy("two", "2") == 1.0  # one string = one reference
    assert tm.vqa_accuracy("3", ["2"]) == 0.0


@pytest.mark.parametrize(
    "matches, want",
    # Leave-one-out over 10 answers: a matching held-out answer leaves m-1 matches, another
    # leaves m; acc = (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10.
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_soft_accuracy_with_ten_references(matches, want):
    refs = ["two"] * matches + ["three", "a cat", "4"] * 4
    refs = refs[:10]
    assert tm.vqa_accuracy("2", refs) == pytest.approx(want)


def test_vqa_accuracy_needs_references():
    with pytest.raises(ValueError, match="at least one"):
        tm.vqa_accuracy("yes", [])
