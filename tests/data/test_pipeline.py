"""Tests for data/preprocess.py (numpy image ops) and data/pipeline.py (grain input pipeline)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from data import preprocess
from data.pipeline import (
    encode_texts,
    iterator_state_from_json,
    iterator_state_to_json,
    make_eval_batches,
    make_train_iterator,
)
from data.tokenizer import EOS_ID, Tokenizer, train_sentencepiece
from data.user_pairs import UserPairsSource

NUM_EXAMPLES = 32


def make_source(n: int = NUM_EXAMPLES, *, labels: bool = True) -> list[dict]:
    """Random images of varied sizes; captions name the example so tokens identify it."""
    rng = np.random.default_rng(0)
    source = []
    for i in range(n):
        h, w = rng.integers(12, 40, size=2)
        ex = {
            "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "caption": f"photo {i} of a {['cat', 'dog', 'bird'][i % 3]}",
        }
        if labels:
            ex["label"] = i % 3
        source.append(ex)
    return source


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    corpus = [ex["caption"] for ex in make_source(100)]
    return Tokenizer(train_sentencepiece(corpus, str(tmp_path_factory.mktemp("spm") / "t"), 200))


@pytest.fixture(scope="module")
def source() -> list[dict]:
    return make_source()


def train_iter(source, tokenizer, **overrides):
    kwargs = dict(
        tokenizer=tokenizer,
        global_batch_size=8,
        image_size=16,
        max_len=32,
        seed=0,
        process_index=0,
        process_count=1,
    )
    kwargs.update(overrides)
    return make_train_iterator(source, **kwargs)


def take(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---------------------------------------------------------------- preprocessing ops


def test_normalize_ranges():
    image = np.array([[[0, 128, 255]]], np.uint8)
    out = preprocess.normalize(image)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6)
    clip = preprocess.normalize(image, preprocess.CLIP_MEAN, preprocess.CLIP_STD)
    expected = (np.array([0, 128, 255]) / 255 - preprocess.CLIP_MEAN) / preprocess.CLIP_STD
    np.testing.assert_allclose(clip[0, 0], expected, rtol=1e-5)


def test_decode_and_resize():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = preprocess.decode(grey)
    assert rgb.shape == (3, 4, 3) and np.all(rgb[..., 0] == grey) and np.all(rgb[..., 2] == grey)
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert preprocess.decode(rgba).shape == (3, 4, 3)
    png = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), 200, np.uint8)).save(png, format="PNG")
    np.testing.assert_array_equal(preprocess.decode(png.getvalue()), np.full((5, 7, 3), 200))
    with pytest.raises(ValueError, match="uint8"):
        preprocess.decode(np.zeros((3, 3, 3), np.float32))

    flat = np.full((20, 30, 3), 77, np.uint8)
    assert preprocess.resize(flat, 8).shape == (8, 8, 3)
    out = preprocess.resize(flat, (6, 10), method="bicubic")
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8 and np.all(out == 77)


def test_random_resized_crop_deterministic():
    image = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)

    def crop(seed):
        return preprocess.random_resized_crop(image, 16, np.random.default_rng(seed))

    assert crop(1).shape == (16, 16, 3) and crop(1).dtype == np.uint8
    # The windows these seeds draw (rows top:top+h, columns left:left+w), found once: the
    # crop is that window resized, and depends on nothing but the generator.
    for seed, (top, left, h, w) in {4: (0, 4, 24, 28), 6: (1, 0, 23, 28)}.items():
        window = image[top : top + h, left : left + w]
        np.testing.assert_array_equal(crop(seed), preprocess.resize(window, 16))
    assert not np.array_equal(crop(4), crop(6))
    # With the full area and the image's own aspect the crop is the whole image.
    whole = preprocess.random_resized_crop(
        image, 16, np.random.default_rng(3), scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3)
    )
    np.testing.assert_array_equal(whole, preprocess.resize(image, 16))


def test_color_jitter():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = preprocess.color_jitter(image, np.random.default_rng(0), brightness=0.1, contrast=0.1)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert 0 < np.abs(out.astype(int) - image).mean() < 0.2 * 255
    same = preprocess.color_jitter(image, np.random.default_rng(0), brightness=0, contrast=0)
    np.testing.assert_array_equal(same, image)


# ---------------------------------------------------------------- training pipeline


def test_train_batch_contents(source, tokenizer):
    batch = next(train_iter(source, tokenizer))
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["tokens"].shape == (8, 32) and batch["tokens"].dtype == np.int32
    assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int64
    # Tokens, labels and index all belong to the same source example.
    captions = tokenizer.decode(batch["tokens"])
    for i, caption, label in zip(batch["index"], captions, batch["label"], strict=True):
        assert caption == source[i]["caption"] and label == source[i]["label"]
    assert np.all(np.any(batch["tokens"] == EOS_ID, axis=1))


def test_train_batches_carry_no_hard_negatives(tokenizer):
    # Nothing in a train step reads them: tokenising and shipping them every step is waste.
    source = [dict(ex, hard_negative="photo 1 of a dog") for ex in make_source(16)]
    batch = next(train_iter(source, tokenizer))
    assert set(batch) == {"image", "tokens", "label", "index"}


def test_no_augmentation_is_plain_resize(source, tokenizer):
    batch = next(train_iter(source, tokenizer, augment=False, shuffle=False))
    np.testing.assert_array_equal(batch["index"], np.arange(8))
    for i in range(8):
        expected = preprocess.normalize(preprocess.resize(source[i]["image"], 16))
        np.testing.assert_array_equal(batch["image"][i], expected)


def test_deterministic_for_a_seed_in_any_process(source, tokenizer, batches_in_other_process):
    # What a resumed run and every host rely on: the stream is a function of the seed, in a
    # new process too (another string hash seed, other thread timings).
    a = take(train_iter(source, tokenizer, seed=3), 6)
    b = batches_in_other_process(
        "from data.tokenizer import Tokenizer\n"
        "from tests.data.test_pipeline import make_source, take, train_iter\n"
        f"tokenizer = Tokenizer({tokenizer.model_path!r})\n"
        "batches = take(train_iter(make_source(), tokenizer, seed=3), 6)"
    )
    assert_batches_equal(a, b)
    c = take(train_iter(source, tokenizer, seed=4), 6)
    assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_epochs_cover_data_and_reshuffle(source, tokenizer):
    steps_per_epoch = NUM_EXAMPLES // 8
    batches = take(train_iter(source, tokenizer), 2 * steps_per_epoch)
    epochs = [
        np.concatenate(
            [b["index"] for b in batches[e * steps_per_epoch : (e + 1) * steps_per_epoch]]
        )
        for e in range(2)
    ]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(NUM_EXAMPLES))
    assert not np.array_equal(epochs[0], epochs[1])
    # Augmentation differs between epochs for the same example.
    first = {
        int(i): img
        for b in batches[:steps_per_epoch]
        for i, img in zip(b["index"], b["image"], strict=True)
    }
    second = {
        int(i): img
        for b in batches[steps_per_epoch:]
        for i, img in zip(b["index"], b["image"], strict=True)
    }
    assert not np.array_equal(first[0], second[0])


def test_num_epochs_ends(source, tokenizer):
    batches = list(train_iter(source, tokenizer, num_epochs=2))
    assert len(batches) == 2 * NUM_EXAMPLES // 8


def test_per_process_shards_are_disjoint_and_match_single_process(source, tokenizer):
    steps_per_epoch = NUM_EXAMPLES // 8
    shards = [
        take(train_iter(source, tokenizer, process_index=p, process_count=2), 2 * steps_per_epoch)
        for p in range(2)
    ]
    assert shards[0][0]["image"].shape == (4, 16, 16, 3)  # per-process batch = 8 // 2
    for epoch in range(2):
        steps = range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        ids = [set(np.concatenate([shard[s]["index"] for s in steps]).tolist()) for shard in shards]
        assert not ids[0] & ids[1]
        assert ids[0] | ids[1] == set(range(NUM_EXAMPLES))
    # At every step the two shards together are the single-process global batch, identically
    # augmented: the data stream does not depend on the number of hosts.
    single = take(train_iter(source, tokenizer), 2 * steps_per_epoch)
    for step, full in enumerate(single):
        images = {int(i): img for i, img in zip(full["index"], full["image"], strict=True)}
        for shard in shards:
            for i, img in zip(shard[step]["index"], shard[step]["image"], strict=True):
                np.testing.assert_array_equal(img, images.pop(int(i)))
        assert not images


def test_uneven_source_gives_equal_shards(tokenizer):
    source = make_source(9)
    shards = [
        take(
            train_iter(source, tokenizer, global_batch_size=2, process_index=p, process_count=2), 4
        )
        for p in range(2)
    ]
    ids = [np.concatenate([b["index"] for b in shard]) for shard in shards]
    assert not set(ids[0].tolist()) & set(ids[1].tolist())  # 4 steps = 1 epoch of 4 each
    assert len(set(ids[0].tolist()) | set(ids[1].tolist())) == 8


def test_indivisible_batch_error(source, tokenizer):
    with pytest.raises(ValueError, match="global_batch_size=6 is not divisible by process_count=4"):
        train_iter(source, tokenizer, global_batch_size=6, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        train_iter(source, tokenizer, process_index=2, process_count=2)


def test_default_process_info_from_jax(source, tokenizer):
    it = make_train_iterator(
        source, tokenizer=tokenizer, global_batch_size=8, image_size=16, max_len=32, seed=0
    )
    assert next(it)["index"].shape == (8,)  # one process in tests: the whole global batch


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_equals_straight_run(source, tokenizer, prefetch):
    n = 5  # crosses the epoch boundary at step 4
    straight = take(train_iter(source, tokenizer, seed=7, prefetch=prefetch), 2 * n)

    first = train_iter(source, tokenizer, seed=7, prefetch=prefetch)
    head = take(first, n)
    saved = iterator_state_to_json(first.get_state())
    json.loads(saved)  # plain JSON, storable in an orbax JSON item
    del first

    resumed = train_iter(source, tokenizer, seed=7, prefetch=prefetch)
    resumed.set_state(iterator_state_from_json(saved))
    assert_batches_equal(head + take(resumed, n), straight)


def test_state_json_round_trip_with_bytes():
    state = {"next_index": 5, "parent": {"blob": b"\x00\xffab", "epochs": [1, np.int64(2)]}}
    restored = iterator_state_from_json(iterator_state_to_json(state))
    assert restored == {"next_index": 5, "parent": {"blob": b"\x00\xffab", "epochs": [1, 2]}}


# ---------------------------------------------------------------- evaluation batches


def test_eval_batches_cover_every_example_once(tokenizer):
    source = make_source(11)
    batches = list(
        make_eval_batches(source, tokenizer=tokenizer, batch_size=4, image_size=16, max_len=32)
    )
    assert len(batches) == 3
    for batch in batches:
        assert batch["mask"].dtype == bool and batch["image"].shape == (4, 16, 16, 3)
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(mask, np.arange(12) < 11)
    np.testing.assert_array_equal(index[mask], np.arange(11))  # in order, each exactly once
    assert index[-1] == -1 and np.all(batches[-1]["tokens"][3] == tokenizer.pad_id)
    # A list source never stands one example in for another: each row holds its own texts.
    text_index = np.concatenate([b["text_index"] for b in batches])
    np.testing.assert_array_equal(text_index, index)
    assert tokenizer.decode(batches[1]["tokens"])[0] == source[4]["caption"]
    np.testing.assert_array_equal(
        batches[2]["image"][0], preprocess.normalize(preprocess.resize(source[8]["image"], 16))
    )


def test_eval_batches_multi_process(tokenizer):
    source = make_source(5, labels=True)
    kwargs = dict(tokenizer=tokenizer, batch_size=2, image_size=8, max_len=32)
    per_process = [
        list(make_eval_batches(source, process_index=p, process_count=4, **kwargs))
        for p in range(4)
    ]
    assert [len(b) for b in per_process] == [1, 1, 1, 1]  # same step count on every process
    seen = np.concatenate([b["index"][b["mask"]] for batches in per_process for b in batches])
    assert sorted(seen.tolist()) == list(range(5))
    labels = np.concatenate([b["label"][b["mask"]] for batches in per_process for b in batches])
    assert sorted(labels.tolist()) == sorted(ex["label"] for ex in source)
    with pytest.raises(ValueError, match="tokenizer is required"):
        make_eval_batches(source, **dict(kwargs, tokenizer=None))


def test_eval_rows_name_the_pair_a_user_source_gave(tokenizer, tmp_path):
    # Pair 1's image is unreadable: the source gives pair 2 in its place, and the row says so.
    captions = ["photo 0 of a cat", "photo 1 of a dog", "photo 2 of a bird"]
    for i, caption in enumerate(captions):
        if i == 1:
            (tmp_path / f"{i}.png").write_bytes(b"not an image")
        else:
            Image.new("RGB", (6, 6), (40 * i + 10, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(caption)
    source = UserPairsSource(str(tmp_path))
    batch = next(
        make_eval_batches(source, tokenizer=tokenizer, batch_size=4, image_size=6, max_len=32)
    )
    np.testing.assert_array_equal(batch["index"], [0, 1, 2, -1])
    np.testing.assert_array_equal(batch["text_index"], [0, 2, 2, -1])
    assert tokenizer.decode(batch["tokens"][:3]) == [captions[0], captions[2], captions[2]]
    np.testing.assert_array_equal(batch["image"][1], batch["image"][2])
    assert not np.array_equal(batch["image"][0], batch["image"][1])


def test_eval_extra_texts(tokenizer):
    negatives = [f"photo {i + 1} of a bird" for i in range(3)]
    source = [dict(ex, hard_negative=n) for ex, n in zip(make_source(3), negatives, strict=True)]
    kwargs = dict(tokenizer=tokenizer, batch_size=4, image_size=8, max_len=32)
    plain = next(make_eval_batches(source, **kwargs))
    assert "hard_negative_tokens" not in plain  # only when asked for
    batch = next(make_eval_batches(source, extra_texts=("hard_negative",), **kwargs))
    assert batch["hard_negative_tokens"].shape == (4, 32)
    assert batch["hard_negative_tokens"].dtype == np.int32
    assert tokenizer.decode(batch["hard_negative_tokens"][:3]) == negatives
    assert np.all(batch["hard_negative_tokens"][3] == tokenizer.pad_id)  # padding row
    np.testing.assert_array_equal(batch["tokens"], plain["tokens"])
    # A missing field fails at the call, before any batch is read.
    with pytest.raises(ValueError, match=r"'negative'.*\['caption', 'hard_negative'"):
        make_eval_batches(source, extra_texts=("negative",), **kwargs)
    with pytest.raises(TypeError, match="sequence of field names"):
        make_eval_batches(source, extra_texts="hard_negative", **kwargs)


def test_encode_texts_pads_last_batch(tokenizer):
    texts = ["photo 1 of a cat", "photo 2 of a dog", "photo 3 of a bird"]
    batches = list(encode_texts(tokenizer, texts, max_len=32, batch_size=2))
    assert len(batches) == 2 and batches[1]["tokens"].shape == (2, 32)
    np.testing.assert_array_equal(batches[1]["mask"], [True, False])
    assert tokenizer.decode(np.concatenate([b["tokens"] for b in batches])[:3]) == texts
