"""Text metrics for generative evaluators: CIDEr-D and BLEU-4 (captions), VQA accuracy (answers).

Caption metrics call pycocoevalcap 1.2's own scorers, so values follow the COCO caption
evaluation code; only its tokenizer is replaced (the PTB tokenizer needs Java) by
`caption_tokens`: lowercase, delete apostrophes ("don't" -> "dont", so a contraction stays one
word), turn every other character that is not a letter or digit into a space, split on
whitespace. PTB tokenisation differs slightly (it keeps hyphenated words whole and splits "'s"
off), so figures are close to, not identical with, published ones.

`Cider` in pycocoevalcap 1.2 computes CIDEr-D (Vedantam et al. 2015, the COCO-server variant):
per n = 1..4, TF-IDF vectors of the n-grams (no stemming), IDF = log(#images) - log(max(1,
df)) with df = the number of images whose *references* contain the n-gram (taken from the
evaluated corpus itself, not a training corpus); similarity to each reference is a cosine whose
numerator is clipped, sum min(g_cand, g_ref) * g_ref (so repeating a word earns nothing), times
a Gaussian length penalty exp(-delta^2 / (2 * 6^2)) (sigma = 6); the n = 1..4 values are averaged
with equal weights, averaged over the image's references, and multiplied by 10. The corpus score
is the mean over images. Quirks of that code, kept: delta counts *bigrams* (word count - 1 for a
non-empty sentence, so equal to the word-count difference unless a sentence is empty), an n whose
vectors have zero norm scores 0, and a corpus of a single image scores 0 (every IDF is log 1 -
log 1 = 0).

`Bleu(4)` is corpus BLEU (Papineni et al.): clipped n-gram counts pooled over the corpus, the
geometric mean of the 1..4-gram precisions, and a brevity penalty against the sum over sentences
of the reference length closest to each candidate's; counts are smoothed by 1e-15 / 1e-9 only to
avoid division by zero (so an exact match scores 1 - O(1e-9) and a disjoint candidate ~1e-15).
"""

import re
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

_NON_WORD = re.compile(r"[\W_]+")


def caption_tokens(text: str) -> str:
    """Lowercase, apostrophes deleted, other non-alphanumerics -> spaces; space-joined words."""
    return " ".join(_NON_WORD.sub(" ", text.lower().replace("'", "")).split())


def _scorer_inputs(
    candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict, dict]:
    """pycocoevalcap's (gts, res) dicts {i: [tokenised text, ...]}, after checking shapes."""
    if isinstance(candidates, str):
        raise TypeError("candidates must be a sequence of strings, not one string")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("no candidates to score")
    gts, res = {}, {}
    for i, (cand, refs) in enumerate(zip(candidates, references, strict=True)):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}")
        gts[i] = [caption_tokens(r) for r in refs]
        res[i] = [caption_tokens(cand)]
    return gts, res


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (x10 scale, as reported on COCO) of candidate i against references[i]."""
    gts, res = _scorer_inputs(candidates, references)
    if not any(r.split() for refs in gts.values() for r in refs):
        return 0.0  # no reference n-grams: pycocoevalcap would fail on an empty df table
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def bleu4(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in [0, 1] of candidate i against references[i]."""
    gts, res = _scorer_inputs(candidates, references)
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3])


# ---------------------------------------------------------------- VQA answers

# The normalisation published with the VQA benchmark (visualqa.org/evaluation.html), applied to
# predictions and ground truth alike: lowercase; commas between digits removed; periods removed
# unless a digit follows (decimal points: "3.5", ".5"); other punctuation except apostrophes and
# colons ("girl's", "2:50") -> space; number words -> digits; articles dropped; missing
# contraction apostrophes restored. Contractions whose apostrophe-less form is itself a word
# ("its", "were", "ill", "hell", "shell", "shed", "lets", "well", "id", "wed") are left alone:
# a missing apostrophe cannot be told from the word; "cant" and "wont" are rare enough as words.
_NUMBER_WORDS = {
    "none": "0",  # the official script maps "none" too ("how many ...?" -> "none")
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTION_WORDS = (
    "ain't aren't can't couldn't couldn't've could've didn't doesn't don't hadn't hasn't "
    "haven't he'd he's how'd how'll how's i'd've i'm i've isn't it'd it'll ma'am mightn't "
    "might've mustn't must've needn't o'clock shan't she's shouldn't should've that'd that's "
    "there'd there're there's they'd they'll they're they've wasn't we'd've we've weren't "
    "what'll what're what's what've when's where'd where's where've who'd who'll who's who've "
    "why'll why're why's won't wouldn't would've y'all you'd you'll you're you've"
)
_CONTRACTIONS = {w.replace("'", ""): w for w in _CONTRACTION_WORDS.split()}
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)")  # a decimal point precedes a digit: ".5"
_PUNCTUATION = re.compile(r"[^\w\s':.]|_")  # remaining periods are decimal points


def vqa_normalize(answer: str) -> str:
    """The VQA benchmark's answer normalisation: "Two dogs." -> "2 dogs", "dont" -> "don't"."""
    text = answer.lower().replace("\n", " ").replace("\t", " ").strip()
    text = _DIGIT_COMMA.sub("", text)
    text = _NON_DECIMAL_PERIOD.sub("", text)
    text = _PUNCTUATION.sub(" ", text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """Accuracy of one answer, both sides normalised with `vqa_normalize`.

    One reference: exact match (0 or 1). M >= 2 references: the official VQA (v1/v2) soft
    accuracy, min(1, #matches / 3) computed against each subset of M - 1 references (leave one
    out: the 10-choose-9 subsets for VQA's 10 answers) and averaged; not the common
    min(1, #matches / 3) shortcut, which over-credits 1 or 2 matches (0.6 vs 2/3 for 2 of 10).
    """
    if isinstance(references, str):
        references = [references]
    if not references:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    pred = vqa_normalize(prediction)
    hits = [vqa_normalize(r) == pred for r in references]
    if len(hits) == 1:
        return float(hits[0])
    total = sum(hits)
    return sum(min(1.0, (total - h) / 3.0) for h in hits) / len(hits)
