"""Data tasks: layouts and their loss targets, options, errors, and the pipeline running them."""

import json

import numpy as np
import pytest

from data import tasks
from data.pipeline import (
    iterator_state_from_json,
    iterator_state_to_json,
    make_eval_batches,
    make_train_iterator,
)
from data.tokenizer import Tokenizer, train_sentencepiece

L = 48


def make_source(n: int = 24) -> list[dict]:
    rng = np.random.default_rng(0)
    colors = ["red", "blue", "green"]
    return [
        {
            "image": rng.integers(0, 256, (20, 20, 3), dtype=np.uint8),
            "caption": f"a {colors[i % 3]} circle left of a {colors[(i + 1) % 3]} square",
            "question": f"what colour is the circle {i}?",
            "answer": colors[i % 3],
            "label": i % 3,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    corpus = [t for ex in make_source(60) for t in (ex["caption"], ex["question"], ex["answer"])]
    return Tokenizer(train_sentencepiece(corpus, str(tmp_path_factory.mktemp("spm") / "t"), 120))


@pytest.fixture(scope="module")
def source() -> list[dict]:
    return make_source()


def task(name, tokenizer, **args):
    return tasks.get_task(name, tokenizer, L, args)


# ---------------------------------------------------------------- layouts


def test_caption_is_the_contrastive_encoding(source, tokenizer):
    out = task("caption", tokenizer)(source[0], 0)
    assert set(out) == {"tokens"}
    np.testing.assert_array_equal(out["tokens"], tokenizer.encode([source[0]["caption"]], L)[0])
    assert tasks.names() == ["caption", "prefix_lm", "text_only", "vqa"]


def test_prefix_lm_layout_and_target(source, tokenizer):
    ex = source[1]
    pieces = tokenizer.pieces([ex["caption"]])[0]
    n = len(pieces)
    out = task("prefix_lm", tokenizer)(ex, 1, np.random.default_rng(0))
    assert set(out) == {"tokens", "prefix_len", "has_image"}
    assert out["tokens"].dtype == np.int32 and out["tokens"].shape == (L,)
    assert out["prefix_len"].dtype == np.int32 and out["has_image"].dtype == np.bool_
    # The whole text, BOS-less, EOS-terminated, padded.
    np.testing.assert_array_equal(out["tokens"][: n + 1], pieces + [tokenizer.eos_id])
    assert tokenizer.bos_id not in out["tokens"] and np.all(out["tokens"][n + 1 :] == 0)
    k = int(out["prefix_len"])
    # The prefix is the caption's first k pieces; the target the rest: >= 1 piece and the EOS.
    assert 0 <= k < n
    np.testing.assert_array_equal(out["tokens"][:k], pieces[:k])
    np.testing.assert_array_equal(out["tokens"][k : n + 1], pieces[k:] + [tokenizer.eos_id])
    assert tokenizer.decode([out["tokens"]])[0] == ex["caption"]
    assert out["has_image"]


def test_random_split_comes_only_from_the_generator(source, tokenizer):
    prefix_lm = task("prefix_lm", tokenizer)
    assert prefix_lm.random
    n = len(tokenizer.pieces([source[0]["caption"]])[0])

    def split(seed):
        return int(prefix_lm(source[0], 0, np.random.default_rng(seed))["prefix_len"])

    # The split is the generator's first draw in [0, n), whatever else the task does.
    assert [split(s) for s in range(5)] == [
        int(np.random.default_rng(s).integers(0, n)) for s in range(5)
    ]
    drawn = {split(s) for s in range(200)}
    assert drawn == set(range(n))  # uniform over [0, n): at least one piece stays a target


def test_fixed_splits(source, tokenizer):
    ex = source[0]
    n = len(tokenizer.pieces([ex["caption"]])[0])
    assert n > 4
    for split, expected in ((0, 0), (2, 2), (100, n - 1), (0.5, n // 2), (0.0, 0)):
        t = task("prefix_lm", tokenizer, split=split)
        assert not t.random and int(t(ex, 0)["prefix_len"]) == expected, split
    for bad in (-1, 1.0, 1.5, "half", True):
        with pytest.raises(ValueError, match="split must be"):
            task("prefix_lm", tokenizer, split=bad)
    with pytest.raises(ValueError, match="eval_split must be"):
        task("prefix_lm", tokenizer, eval_split="random")


def test_vqa_layout_loss_on_the_answer_only(source, tokenizer):
    ex = source[4]
    q, a = tokenizer.pieces([ex["question"]])[0], tokenizer.pieces([ex["answer"]])[0]
    out = task("vqa", tokenizer)(ex, 4)
    np.testing.assert_array_equal(out["tokens"][: len(q) + len(a) + 1], q + a + [tokenizer.eos_id])
    assert int(out["prefix_len"]) == len(q) and out["has_image"]
    assert np.all(out["tokens"][len(q) + len(a) + 1 :] == tokenizer.pad_id)
    assert tokenizer.decode([out["tokens"]])[0] == f"{ex['question']} {ex['answer']}"
    # Too long: the question loses pieces from its end, the answer and EOS survive.
    short = tasks.get_task("vqa", tokenizer, len(a) + 4)(ex, 4)
    assert int(short["prefix_len"]) == 3
    np.testing.assert_array_equal(short["tokens"], q[:3] + a + [tokenizer.eos_id])


def test_text_only_layout(tokenizer):
    t = task("text_only", tokenizer, split=0)
    out = t({"caption": "a red circle"}, 0)
    assert not out["has_image"] and int(out["prefix_len"]) == 0 and not t.has_image
    assert tokenizer.decode([out["tokens"]]) == ["a red circle"]
    t.check_fields(["caption"])


def test_prompts(source, tokenizer):
    ex = source[2]
    q = tokenizer.pieces([ex["question"]])[0]
    vqa = task("vqa", tokenizer).prompt(ex, 2)
    assert set(vqa) == {"prompt", "prompt_len", "has_image"} and int(vqa["prompt_len"]) == len(q)
    np.testing.assert_array_equal(vqa["prompt"][: len(q)], q)
    assert np.all(vqa["prompt"][len(q) :] == tokenizer.pad_id)  # no EOS: generation goes on
    caption = task("prefix_lm", tokenizer).prompt(ex, 2)  # eval_split=0: captioning
    assert int(caption["prompt_len"]) == 0 and np.all(caption["prompt"] == tokenizer.pad_id)
    half = task("prefix_lm", tokenizer, eval_split=0.5).prompt(ex, 2)
    n = len(tokenizer.pieces([ex["caption"]])[0])
    assert int(half["prompt_len"]) == n // 2


# ---------------------------------------------------------------- errors


def test_clear_errors(source, tokenizer):
    with pytest.raises(ValueError, match=r"Unknown data task 'vqa2'.*'prefix_lm'"):
        tasks.get_task("vqa2", tokenizer, L)
    with pytest.raises(ValueError, match=r"unknown options \['splt'\].*\['eval_split', 'split'\]"):
        task("prefix_lm", tokenizer, splt=0)
    with pytest.raises(ValueError, match="takes"):
        task("vqa", tokenizer, split=0)
    with pytest.raises(
        ValueError, match=r"task 'vqa' needs fields \['image', 'question', 'answer'\]"
    ):
        task("vqa", tokenizer).check_fields(["caption", "image"])
    with pytest.raises(ValueError, match="use task 'text_only'"):
        task("prefix_lm", tokenizer).check_fields(["caption"])
    for text in ("", "   "):
        with pytest.raises(ValueError, match=r"field 'caption' of source example 7 is empty"):
            task("prefix_lm", tokenizer)(
                {"image": None, "caption": text}, 7, np.random.default_rng()
            )
    with pytest.raises(ValueError, match="field 'answer' of source example 1 is empty"):
        task("vqa", tokenizer)({"question": "what?", "answer": ""}, 1)
    with pytest.raises(ValueError, match="max_len >= 3"):
        tasks.get_task("vqa", tokenizer, 2)


# ---------------------------------------------------------------- in the pipeline


def train_iter(source, tokenizer, **overrides):
    kwargs = dict(
        tokenizer=tokenizer,
        global_batch_size=8,
        image_size=16,
        max_len=L,
        seed=0,
        process_index=0,
        process_count=1,
        task="prefix_lm",
    )
    kwargs.update(overrides)
    return make_train_iterator(source, **kwargs)


def take(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_prefix_lm_batches(source, tokenizer):
    batch = next(train_iter(source, tokenizer))
    assert set(batch) == {"image", "tokens", "prefix_len", "has_image", "index", "label"}
    assert batch["tokens"].shape == (8, L) and batch["prefix_len"].shape == (8,)
    assert batch["has_image"].all() and batch["image"].shape == (8, 16, 16, 3)
    texts = tokenizer.decode(batch["tokens"])
    assert texts == [source[i]["caption"] for i in batch["index"]]


def test_caption_task_is_the_default(source, tokenizer):
    explicit = take(train_iter(source, tokenizer, task="caption", seed=2), 3)
    default = take(make_train_iterator(**{**_kw(tokenizer), "seed": 2}, source=source), 3)
    assert_batches_equal(explicit, default)


def _kw(tokenizer):
    return dict(
        tokenizer=tokenizer,
        global_batch_size=8,
        image_size=16,
        max_len=L,
        seed=0,
        process_index=0,
        process_count=1,
    )


def test_random_split_is_keyed_by_stream_position(source, tokenizer):
    steps = 2 * len(source) // 8  # two epochs
    a = take(train_iter(source, tokenizer, seed=5), steps)
    # The same example gets other splits in another epoch (a new position), so the split
    # is not a function of the example.
    first = {
        int(i): int(k) for x in a[:3] for i, k in zip(x["index"], x["prefix_len"], strict=True)
    }
    second = {
        int(i): int(k) for x in a[3:] for i, k in zip(x["index"], x["prefix_len"], strict=True)
    }
    assert any(first[i] != second[i] for i in first)
    # Host-count independent: two processes' batches together are the single-process batch.
    shards = [
        take(train_iter(source, tokenizer, seed=5, process_index=p, process_count=2), steps)
        for p in range(2)
    ]
    for step, full in enumerate(a):
        rows = {int(i): r for r, i in enumerate(full["index"])}
        for shard in shards:
            for r, i in enumerate(shard[step]["index"]):
                full_row = rows.pop(int(i))
                for key in ("tokens", "prefix_len", "image"):
                    np.testing.assert_array_equal(shard[step][key][r], full[key][full_row])
        assert not rows
    # Without augmentation the task still draws its split from grain's generator, keyed by
    # the same positions: the same splits as with it.
    c = take(train_iter(source, tokenizer, seed=5, augment=False), 3)
    for plain, augmented in zip(c, a[:3], strict=True):
        for key in ("index", "tokens", "prefix_len"):
            np.testing.assert_array_equal(plain[key], augmented[key])


def test_resume_with_a_random_task(source, tokenizer):
    straight = take(train_iter(source, tokenizer, seed=9), 8)
    first = train_iter(source, tokenizer, seed=9)
    head = take(first, 5)
    saved = iterator_state_to_json(first.get_state())
    json.loads(saved)
    resumed = train_iter(source, tokenizer, seed=9)
    resumed.set_state(iterator_state_from_json(saved))
    assert_batches_equal(head + take(resumed, 3), straight)


def test_vqa_and_text_only_batches(source, tokenizer):
    batch = next(train_iter(source, tokenizer, task="vqa"))
    for row, i in enumerate(batch["index"]):
        q, a = tokenizer.pieces([source[i]["question"], source[i]["answer"]])
        assert int(batch["prefix_len"][row]) == len(q)
        target = batch["tokens"][row][len(q) : len(q) + len(a) + 1]
        np.testing.assert_array_equal(target, a + [tokenizer.eos_id])
    texts = [{"caption": ex["caption"]} for ex in source]
    batch = next(train_iter(texts, tokenizer, task="text_only", augment=True))
    assert not batch["has_image"].any() and np.all(batch["image"] == 0)
    assert batch["image"].shape == (8, 16, 16, 3) and "label" not in batch


def test_missing_fields_fail_at_the_call(source, tokenizer):
    captions_only = [{"image": ex["image"], "caption": ex["caption"]} for ex in source]
    with pytest.raises(
        ValueError, match=r"task 'vqa' needs fields.*source has \['caption', 'image'\]"
    ):
        train_iter(captions_only, tokenizer, task="vqa")
    with pytest.raises(ValueError, match="needs fields"):
        make_eval_batches(captions_only, task="vqa", **_eval_kw(tokenizer))
    with pytest.raises(ValueError, match="unknown options"):
        train_iter(source, tokenizer, task_args={"nope": 1})


def test_empty_caption_fails_loudly_in_the_stream(source, tokenizer):
    broken = [dict(ex, caption="" if i == 3 else ex["caption"]) for i, ex in enumerate(source)]
    it = train_iter(broken, tokenizer, shuffle=False, prefetch=0)
    with pytest.raises(ValueError, match="source example 3 is empty"):
        next(it)


def _eval_kw(tokenizer):
    return dict(tokenizer=tokenizer, batch_size=5, image_size=16, max_len=L)


def test_eval_batches_with_a_task(source, tokenizer):
    batches = list(make_eval_batches(source[:7], task="vqa", **_eval_kw(tokenizer)))
    assert len(batches) == 2
    b = batches[0]
    assert set(b) == {
        "image", "prompt", "prompt_len", "has_image", "index", "text_index", "label", "mask"
    }  # fmt: skip
    assert tokenizer.decode(b["prompt"]) == [ex["question"] for ex in source[:5]]
    np.testing.assert_array_equal(
        b["prompt_len"], [len(p) for p in tokenizer.pieces([ex["question"] for ex in source[:5]])]
    )
    last = batches[1]
    np.testing.assert_array_equal(last["mask"], [True, True, False, False, False])
    assert np.all(last["prompt_len"][2:] == 0) and np.all(last["index"][2:] == -1)
    caption = next(make_eval_batches(source, task="prefix_lm", **_eval_kw(tokenizer)))
    assert np.all(caption["prompt_len"] == 0) and np.all(caption["prompt"] == tokenizer.pad_id)
    plain = next(make_eval_batches(source, **_eval_kw(tokenizer)))  # task "caption"
    assert set(plain) == {"image", "tokens", "index", "text_index", "label", "mask"}
    captions = [ex["caption"] for ex in source[:5]]
    np.testing.assert_array_equal(plain["tokens"], tokenizer.encode(captions, L))
    with_extra = next(
        make_eval_batches(source, task="vqa", extra_texts=("answer",), **_eval_kw(tokenizer))
    )
    assert tokenizer.decode(with_extra["answer_tokens"]) == [ex["answer"] for ex in source[:5]]
