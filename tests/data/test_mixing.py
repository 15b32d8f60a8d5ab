"""Mixing sources by a ratio: determinism, resumability, the realised ratio, host independence."""

import json

import numpy as np
import pytest

from data import tasks
from data.mixing import Component, make_mixed_train_iterator
from data.pipeline import iterator_state_from_json, iterator_state_to_json
from data.tokenizer import Tokenizer, train_sentencepiece

L = 32


def image_text(n: int) -> list[dict]:
    rng = np.random.default_rng(1)
    return [
        {
            "image": rng.integers(0, 256, (12, 12, 3), dtype=np.uint8),
            "caption": f"photo {i} of a cat",
            "label": i % 2,  # dropped in mixed batches: text-only examples have none
        }
        for i in range(n)
    ]


def text_only(n: int) -> list[dict]:
    return [{"caption": f"story {i} of a dog"} for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    corpus = [ex["caption"] for ex in image_text(50) + text_only(50)]
    return Tokenizer(train_sentencepiece(corpus, str(tmp_path_factory.mktemp("spm") / "t"), 100))


def components(weights=(0.8, 0.2)) -> list[Component]:
    return [
        Component(image_text(20), weights[0], "prefix_lm", name="pairs"),
        Component(text_only(13), weights[1], "text_only", name="texts"),
    ]


def mixed(tokenizer, comps=None, **overrides):
    kwargs = dict(
        tokenizer=tokenizer,
        global_batch_size=10,
        image_size=8,
        max_len=L,
        seed=0,
        process_index=0,
        process_count=1,
    )
    kwargs.update(overrides)
    return make_mixed_train_iterator(components() if comps is None else comps, **kwargs)


def take(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batches_hold_both_sources_in_one_layout(tokenizer):
    batch = next(mixed(tokenizer))
    assert set(batch) == {"image", "tokens", "prefix_len", "has_image", "index", "source"}
    assert batch["image"].shape == (10, 8, 8, 3) and batch["tokens"].shape == (10, L)
    texts = batch["source"] == 1
    np.testing.assert_array_equal(batch["has_image"], ~texts)
    assert np.all(batch["image"][texts] == 0) and np.any(batch["image"][~texts] != 0)
    decoded = tokenizer.decode(batch["tokens"])
    pools = [image_text(20), text_only(13)]
    for text, src, i in zip(decoded, batch["source"], batch["index"], strict=True):
        assert text == pools[src][i]["caption"]


def test_same_seed_same_stream_in_any_process_and_seeds_differ(tokenizer, batches_in_other_process):
    a = take(mixed(tokenizer, seed=3), 8)
    there = batches_in_other_process(
        "from data.tokenizer import Tokenizer\n"
        "from tests.data.test_mixing import mixed, take\n"
        f"batches = take(mixed(Tokenizer({tokenizer.model_path!r}), seed=3), 8)"
    )
    assert_batches_equal(a, there)
    b = take(mixed(tokenizer, seed=4), 8)
    assert any(not np.array_equal(x["index"], y["index"]) for x, y in zip(a, b, strict=True))


def test_realised_ratio_is_close_to_the_asked_one(tokenizer):
    for weights in ((0.8, 0.2), (0.5, 0.5), (3.0, 1.0)):
        batches = take(mixed(tokenizer, components(weights)), 40)
        share = np.mean(np.concatenate([b["source"] for b in batches]) == 1)
        assert abs(share - weights[1] / sum(weights)) < 0.01, weights
        # Every batch, not only the whole run, is close to the ratio.
        per_batch = [np.mean(b["source"] == 1) for b in batches]
        assert max(abs(p - weights[1] / sum(weights)) for p in per_batch) <= 0.1 + 1e-9


def test_each_component_reshuffles_its_epochs(tokenizer):
    batches = take(mixed(tokenizer), 52)  # 416 pair draws: 20 epochs of the 20 pairs
    draws = [
        int(i) for b in batches for s, i in zip(b["source"], b["index"], strict=True) if s == 0
    ]
    epochs = [draws[e * 20 : (e + 1) * 20] for e in range(2)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(20))  # each epoch visits every example once
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_continues_exactly(tokenizer, prefetch):
    straight = take(mixed(tokenizer, seed=7, prefetch=prefetch), 12)
    first = mixed(tokenizer, seed=7, prefetch=prefetch)
    head = take(first, 7)
    saved = iterator_state_to_json(first.get_state())
    json.loads(saved)
    resumed = mixed(tokenizer, seed=7, prefetch=prefetch)
    resumed.set_state(iterator_state_from_json(saved))
    assert_batches_equal(head + take(resumed, 5), straight)


def test_processes_together_give_the_single_process_batch(tokenizer):
    single = take(mixed(tokenizer, seed=1), 6)
    shards = [take(mixed(tokenizer, seed=1, process_index=p, process_count=2), 6) for p in range(2)]
    assert shards[0][0]["tokens"].shape == (5, L)
    for step, full in enumerate(single):
        rows = {}
        for r, (s, i, k) in enumerate(
            zip(full["source"], full["index"], full["prefix_len"], strict=True)
        ):
            rows.setdefault((int(s), int(i), int(k)), []).append(r)
        for shard in shards:
            b = shard[step]
            for r in range(5):
                key = (int(b["source"][r]), int(b["index"][r]), int(b["prefix_len"][r]))
                full_row = rows[key].pop()
                np.testing.assert_array_equal(b["image"][r], full["image"][full_row])
        assert not any(rows.values())


def test_clear_errors(tokenizer):
    pairs, texts = image_text(8), text_only(8)
    with pytest.raises(ValueError, match=r"mix component 1 \(texts\) has.*'text_only'"):
        mixed(
            tokenizer,
            [Component(pairs, 1, "prefix_lm"), Component(texts, 1, "prefix_lm", name="texts")],
        )
    with pytest.raises(ValueError, match="different layouts"):
        mixed(tokenizer, [Component(pairs, 1, "caption"), Component(texts, 1, "text_only")])
    with pytest.raises(ValueError, match="weight must be > 0"):
        mixed(tokenizer, [Component(pairs, 0.0, "prefix_lm"), Component(texts, 1, "text_only")])
    with pytest.raises(ValueError, match="at least one component"):
        mixed(tokenizer, [])
    with pytest.raises(ValueError, match="not divisible"):
        mixed(tokenizer, global_batch_size=9, process_count=2, process_index=0)
    # A Task object works in place of a name; its options travel with it.
    fixed = tasks.get_task("prefix_lm", tokenizer, L, {"split": 0})
    batch = next(mixed(tokenizer, [Component(pairs, 1, fixed), Component(texts, 1, "text_only")]))
    assert np.all(batch["prefix_len"][batch["source"] == 0] == 0)
