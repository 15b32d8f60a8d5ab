"""Evaluators: exact metrics on hand-built embeddings, end-to-end runs with fake data and towers."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from data import pipeline, user_pairs
from experiments import evaluators
from experiments.evaluators import metrics
from experiments.evaluators.retrieval import RetrievalEvaluator
from experiments.evaluators.zero_shot import ZeroShotEvaluator, build_prompts


def embeddings_with_scores(scores):
    """Unit-norm image [N, D] and text [M, D] embeddings whose cosine matrix is c * scores.

    Images are one-hot; each text row holds its score column plus a filler dimension that makes
    it unit-norm. c > 0 only rescales, so every ranking equals that of `scores`.
    """
    scores = np.asarray(scores, np.float64)
    n, m = scores.shape
    cols = scores.T / (1.01 * np.linalg.norm(scores, axis=0).max())  # [M, N], row norms < 1
    filler = np.sqrt(1.0 - (cols**2).sum(axis=1, keepdims=True))
    image = np.concatenate([np.eye(n), np.zeros((n, 1))], axis=1)
    return image, np.concatenate([cols, filler], axis=1)


# ---------------------------------------------------------------- metrics: class embeddings


def test_class_embeddings_averages_normalised_templates():
    text = np.array(
        [
            [[1.0, 0.0], [0.0, 2.0]],  # normalised: [1,0],[0,1] -> mean [.5,.5]
            [[0.0, 3.0], [0.0, 0.5]],  # both [0,1]
        ]
    )
    want = np.array([[1.0, 1.0], [0.0, np.sqrt(2.0)]]) / np.sqrt(2.0)
    np.testing.assert_allclose(metrics.class_embeddings(text), want, atol=1e-12)
    flat = text.reshape(4, 2)  # class-major
    np.testing.assert_allclose(metrics.class_embeddings(flat, num_templates=2), want, atol=1e-12)
    with pytest.raises(ValueError, match="num_templates"):
        metrics.class_embeddings(flat)
    with pytest.raises(ValueError, match="multiple"):
        metrics.class_embeddings(flat[:3], num_templates=2)


# ---------------------------------------------------------------- metrics: zero-shot


def test_zero_shot_identity_is_perfect_and_skips_k_above_classes():
    out = metrics.zero_shot_accuracy(np.eye(4), np.eye(4), np.arange(4), ks=(1, 5))
    assert out == {"top1": 1.0, "chance_top1": 0.25}


def test_zero_shot_label_at_rank_two():
    # Image of class y scores 1.0 for class y+1 and 0.5 for y: rank 1 for every image.
    c = 6
    labels = np.arange(c)
    image = 0.5 * np.eye(c) + np.roll(np.eye(c), 1, axis=1)
    out = metrics.zero_shot_accuracy(image, np.eye(c), labels, ks=(1, 2, 5))
    assert out == {
        "top1": 0.0,
        "top2": 1.0,
        "top5": 1.0,
        "chance_top1": 1 / 6,
        "chance_top2": 2 / 6,
        "chance_top5": 5 / 6,
    }


def test_zero_shot_fraction_by_hand():
    classes = np.eye(3)
    image = np.array([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.9, 0.0, 0.5]])
    labels = np.array([0, 1, 2])  # image 2 prefers class 0: rank 1
    out = metrics.zero_shot_accuracy(image, classes, labels, ks=(1, 2, 3))
    assert out["top1"] == 2 / 3
    assert out["top2"] == 1.0 and out["top3"] == 1.0


def test_zero_shot_ties_are_pessimistic():
    # Constant embeddings: every wrong class ties the label, so only top-C is a hit.
    out = metrics.zero_shot_accuracy(
        np.ones((5, 4)), np.ones((3, 4)), np.array([0, 1, 2, 0, 1]), ks=(1, 2, 3)
    )
    assert (out["top1"], out["top2"], out["top3"]) == (0.0, 0.0, 1.0)
    # An image exactly between its label and one other class: that class ranks ahead.
    out = metrics.zero_shot_accuracy(
        np.array([[1.0, 1.0, 0.0]]), np.eye(3), np.array([0]), ks=(1, 2)
    )
    assert (out["top1"], out["top2"]) == (0.0, 1.0)


def test_zero_shot_normalises_inputs():
    # A long wrong class vector must not win: similarity is cosine.
    classes = np.array([[1.0, 0.0], [10.0, 10.0]])
    out = metrics.zero_shot_accuracy(np.array([[3.0, 0.0]]), classes, np.array([0]), ks=(1,))
    assert out["top1"] == 1.0


def test_zero_shot_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.zero_shot_accuracy(np.eye(2), np.eye(2), np.array([0, 2]))
    with pytest.raises(ValueError, match="labels must be int"):
        metrics.zero_shot_accuracy(np.eye(2), np.eye(2), np.array([0.0, 1.0]))


# ---------------------------------------------------------------- metrics: retrieval


def test_retrieval_identity_is_perfect():
    out = metrics.retrieval_recall(np.eye(12), np.eye(12), np.arange(12))
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert out[f"{d}_r@{k}"] == 1.0
            assert out[f"chance_{d}_r@{k}"] == pytest.approx(k / 12, abs=1e-15)


def test_retrieval_right_answer_at_rank_two():
    # Image n matches caption n+1 (1.0) better than its own caption n (0.5), in both directions.
    n = 6
    image, text = embeddings_with_scores(0.5 * np.eye(n) + np.roll(np.eye(n), 1, axis=1))
    out = metrics.retrieval_recall(image, text, np.arange(n))
    assert out["i2t_r@1"] == 0.0 and out["t2i_r@1"] == 0.0
    assert out["i2t_r@5"] == 1.0 and out["t2i_r@5"] == 1.0
    assert "i2t_r@10" not in out and "t2i_r@10" not in out  # only 6 candidates


def test_retrieval_fraction_by_hand():
    scores = np.eye(3)
    scores[2, 0] = 2.0  # image 2 prefers caption 0; caption 0 prefers image 2
    image, text = embeddings_with_scores(scores)
    out = metrics.retrieval_recall(image, text, np.arange(3), ks=(1, 2))
    assert out["i2t_r@1"] == 2 / 3 and out["t2i_r@1"] == 2 / 3
    assert out["i2t_r@2"] == 1.0 and out["t2i_r@2"] == 1.0


def test_retrieval_multiple_captions_per_image():
    text_to_image = np.array([0, 0, 0, 1, 1])
    scores = np.array(
        [
            [0.2, 0.9, 0.1, 0.5, 0.3],  # image 0: its best caption (0.9) is first
            [0.8, 0.7, 0.1, 0.3, 0.6],  # image 1: best own 0.6 behind 0.8 and 0.7: rank 2
        ]
    )
    image, text = embeddings_with_scores(scores)
    out = metrics.retrieval_recall(image, text, text_to_image, ks=(1, 2, 3))
    assert (out["i2t_r@1"], out["i2t_r@2"], out["i2t_r@3"]) == (0.5, 0.5, 1.0)
    # Columns: caption 0 miss, 1 hit, 2 tie 0.1 = 0.1 (pessimistic miss), 3 miss, 4 hit.
    assert out["t2i_r@1"] == 2 / 5 and out["t2i_r@2"] == 1.0
    assert "t2i_r@3" not in out  # only 2 images
    # Chance i2t: mean over images of 1 - C(M-c, k)/C(M, k), c = 3 and 2 of M = 5.
    assert out["chance_i2t_r@1"] == pytest.approx((3 / 5 + 2 / 5) / 2, abs=1e-15)
    assert out["chance_i2t_r@2"] == pytest.approx((0.9 + 0.7) / 2, abs=1e-15)
    assert out["chance_i2t_r@3"] == pytest.approx((1.0 + (1 - 1 / 10)) / 2, abs=1e-15)
    assert out["chance_t2i_r@1"] == 0.5


def test_retrieval_images_without_captions_are_not_i2t_queries():
    # Image 2 has no caption: i2t averages over images 0 and 1 only.
    out = metrics.retrieval_recall(np.eye(3), np.eye(3)[:2], np.array([0, 1]), ks=(1,))
    assert out["i2t_r@1"] == 1.0 and out["t2i_r@1"] == 1.0
    assert out["chance_i2t_r@1"] == 0.5 and out["chance_t2i_r@1"] == pytest.approx(1 / 3)


def test_retrieval_constant_embeddings_score_zero():
    out = metrics.retrieval_recall(np.ones((12, 4)), np.ones((12, 4)), np.arange(12))
    assert all(out[f"{d}_r@{k}"] == 0.0 for d in ("i2t", "t2i") for k in (1, 5, 10))


def test_retrieval_rejects_bad_mapping():
    with pytest.raises(ValueError, match="text_to_image must lie"):
        metrics.retrieval_recall(np.eye(2), np.eye(2), np.array([0, 2]))
    with pytest.raises(ValueError, match="widths differ"):
        metrics.retrieval_recall(np.eye(2), np.eye(3), np.array([0, 1, 1]))


# ---------------------------------------------------------------- evaluators end to end

CLASSES = ["cat", "dog", "fox"]
TEMPLATES = ["a {}", "the {}."]


class FakeInfo:
    """Tokens of a prompt are [class index, template index]."""

    class_names = CLASSES
    templates = TEMPLATES

    @staticmethod
    def encode_texts(texts):
        prompts = build_prompts(CLASSES, TEMPLATES)
        return np.array([divmod(prompts.index(t), len(TEMPLATES)) for t in texts], np.int32)


def fake_embed_text(tokens):
    # Template 0 adds +0.5 of the next class, template 1 subtracts it: the average is the class.
    cls, tpl = tokens[:, 0], tokens[:, 1]
    emb = np.eye(3)[cls] + np.where(tpl == 0, 0.5, -0.5)[:, None] * np.eye(3)[(cls + 1) % 3]
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def make_batches(rows, batch_size):
    """In-memory batches of `batch_size` rows; the last batch is padded with mask=False rows
    holding misleading values, so counting them would change every metric."""
    n = len(rows["image"])
    pad = -n % batch_size
    padded = {k: np.concatenate([v, v[:pad][::-1] + 1]) for k, v in rows.items()}
    padded["mask"] = np.arange(n + pad) < n
    return lambda: iter(
        [
            {k: v[i : i + batch_size] for k, v in padded.items()}
            for i in range(0, n + pad, batch_size)
        ]
    )


def zero_shot_rows():
    # Image pixels [0,0,0] / [0,0,1] encode the predicted class and the runner-up.
    pred = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    second = (pred + 1) % 3
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 2, 0, 2])  # 7 top-1 hits; 7 and 8 are top-2 hits
    image = np.zeros((10, 2, 2, 3), np.float32)
    image[:, 0, 0, 0], image[:, 0, 0, 1] = pred, second
    tokens = np.zeros((10, 4), np.int32)
    return {"image": image, "tokens": tokens, "label": labels.astype(np.int32)}


def fake_embed_image_classes(images):
    pred, second = images[:, 0, 0, 0].astype(int), images[:, 0, 0, 1].astype(int)
    emb = np.eye(3)[pred] + 0.3 * np.eye(3)[second % 3]
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def recording(fn, shapes):
    def wrapped(x):
        shapes.append(np.shape(x))
        return fn(np.asarray(x))

    return wrapped


def zero_shot_config(**overrides):
    return ml_collections.ConfigDict(
        dict(type="zero_shot", every_steps=10, data="fake", split="test", batch_size=3, ks=(1, 2))
        | overrides
    )


def test_zero_shot_evaluator_exact_and_ignores_padding():
    make_data = lambda spec, split: (make_batches(zero_shot_rows(), 4), FakeInfo())
    ev = ZeroShotEvaluator(zero_shot_config(), make_data=make_data)
    assert ev.every_steps == 10
    image_shapes, text_shapes = [], []
    out = ev.run(
        {
            "embed_image": recording(fake_embed_image_classes, image_shapes),
            "embed_text": recording(fake_embed_text, text_shapes),
        }
    )
    assert out == {
        "top1": 0.7,
        "top2": 0.9,
        "chance_top1": 1 / 3,
        "chance_top2": 2 / 3,
        "num_examples": 10.0,
    }
    # 10 valid images in fixed chunks of 3 (last zero-padded); 6 prompts in chunks of 3.
    assert image_shapes == [(3, 2, 2, 3)] * 4
    assert text_shapes == [(3, 2)] * 2
    # Template averaging recovers the one-hot class vectors exactly.
    np.testing.assert_allclose(ev.class_embeddings(fake_embed_text), np.eye(3), atol=1e-12)
    # Runs are repeatable: batches_fn gives a fresh iterator each time.
    assert ev.run({"embed_image": fake_embed_image_classes, "embed_text": fake_embed_text}) == out


def test_zero_shot_evaluator_max_examples_and_config_classes():
    make_data = lambda spec, split: (make_batches(zero_shot_rows(), 4), FakeInfo())
    ev = ZeroShotEvaluator(zero_shot_config(max_examples=8), make_data=make_data)
    out = ev.run({"embed_image": fake_embed_image_classes, "embed_text": fake_embed_text})
    assert (out["top1"], out["num_examples"]) == (7 / 8, 8.0)
    ev = ZeroShotEvaluator(
        zero_shot_config(class_names=["dog", "cat", "fox"], templates=["a {}"]),
        make_data=make_data,
    )
    assert ev.prompt_tokens.tolist() == [[1, 0], [0, 0], [2, 0]]


def test_zero_shot_evaluator_config_errors():
    class NoClasses:
        encode_texts = staticmethod(FakeInfo.encode_texts)
        templates = TEMPLATES

    make_data = lambda spec, split: (make_batches(zero_shot_rows(), 4), FakeInfo())
    with pytest.raises(ValueError, match=r"unknown config keys \['batchsize'\]"):
        ZeroShotEvaluator(zero_shot_config(batchsize=2), make_data=make_data)
    with pytest.raises(ValueError, match=r"missing required config keys \['split'\]"):
        config = dict(zero_shot_config())
        del config["split"]
        ZeroShotEvaluator(config, make_data=make_data)
    with pytest.raises(ValueError, match="no class names"):
        ZeroShotEvaluator(zero_shot_config(), make_data=lambda s, p: (None, NoClasses()))
    with pytest.raises(ValueError, match="placeholder"):
        ZeroShotEvaluator(zero_shot_config(templates=["a photo"]), make_data=make_data)
    with pytest.raises(ValueError, match="config type is 'retrieval'"):
        ZeroShotEvaluator(zero_shot_config(type="retrieval"), make_data=make_data)


def retrieval_rows(n=10):
    # Captions 8 and 9 are swapped: both pairs rank their true partner last (ties pessimistic).
    target = np.arange(n)
    target[[8, 9]] = [9, 8]
    image = np.zeros((n, 2, 2, 3), np.float32)
    image[:, 0, 0, 0] = np.arange(n)
    tokens = np.zeros((n, 4), np.int32)
    tokens[:, 0] = target
    return {"image": image, "tokens": tokens}


def fake_embed_image_ids(images):
    return np.eye(16)[images[:, 0, 0, 0].astype(int)]


def fake_embed_text_ids(tokens):
    return np.eye(16)[tokens[:, 0]]


def test_retrieval_evaluator_exact_and_ignores_padding():
    make_data = lambda spec, split: (make_batches(retrieval_rows(), 4), FakeInfo())
    config = ml_collections.ConfigDict(
        dict(type="retrieval", data="fake", split="val", batch_size=4)
    )
    ev = RetrievalEvaluator(config, make_data=make_data)
    assert ev.every_steps == 0
    shapes = []
    out = ev.run(
        {"embed_image": recording(fake_embed_image_ids, shapes), "embed_text": fake_embed_text_ids}
    )
    assert out == {
        "i2t_r@1": 0.8,
        "i2t_r@5": 0.8,
        "i2t_r@10": 1.0,
        "t2i_r@1": 0.8,
        "t2i_r@5": 0.8,
        "t2i_r@10": 1.0,
        "chance_i2t_r@1": pytest.approx(0.1, abs=1e-15),
        "chance_i2t_r@5": pytest.approx(0.5, abs=1e-15),
        "chance_i2t_r@10": 1.0,
        "chance_t2i_r@1": pytest.approx(0.1, abs=1e-15),
        "chance_t2i_r@5": pytest.approx(0.5, abs=1e-15),
        "chance_t2i_r@10": 1.0,
        "num_examples": 10.0,
    }
    assert shapes == [(4, 2, 2, 3)] * 3


def test_valid_chunks_respects_mask_anywhere():
    batches = [
        {"x": np.array([1, 2, 3]), "mask": np.array([True, False, True])},
        {"x": np.array([4, 5]), "mask": np.array([False, True])},
    ]
    chunks = list(evaluators.valid_chunks(lambda: iter(batches), ("x",), batch_size=2))
    assert [(c["x"].tolist(), n) for c, n in chunks] == [([1, 3], 2), ([5, 0], 1)]
    with pytest.raises(ValueError, match="lacks 'mask'"):
        list(evaluators.valid_chunks(lambda: iter([{"x": np.ones(2)}]), ("x",), batch_size=2))


# ---------------------------------------------------------------- registry


def test_registry_lookup_and_errors():
    assert evaluators.get_evaluator("zero_shot") is ZeroShotEvaluator
    assert evaluators.get_evaluator("retrieval") is RetrievalEvaluator
    known = r"'retrieval', 'vqa', 'zero_shot'\]"
    with pytest.raises(ValueError, match=r"unknown evaluator 'nope'.*" + known):
        evaluators.get_evaluator("nope")
    with pytest.raises(ValueError, match="already registered"):
        evaluators.register("zero_shot")(RetrievalEvaluator)


def test_build_evaluators():
    make_data = lambda spec, split: (make_batches(zero_shot_rows(), 4), FakeInfo())
    evals = ml_collections.ConfigDict()
    evals.zs = zero_shot_config()
    evals.ret = ml_collections.ConfigDict(
        dict(type="retrieval", data="fake", split="val", batch_size=4, every_steps=5)
    )
    built = evaluators.build_evaluators(evals, make_data=make_data)
    assert set(built) == {"zs", "ret"}
    assert isinstance(built["zs"], ZeroShotEvaluator) and built["zs"].every_steps == 10
    assert isinstance(built["ret"], RetrievalEvaluator) and built["ret"].every_steps == 5
    assert evaluators.build_evaluators(None, make_data=make_data) == {}
    with pytest.raises(ValueError, match="evals.bad: unknown evaluator 'nope'"):
        evaluators.build_evaluators({"bad": {"type": "nope"}}, make_data=make_data)
    with pytest.raises(ValueError, match="evals.x lacks 'type'"):
        evaluators.build_evaluators({"x": {"data": "fake"}}, make_data=make_data)
    with pytest.raises(
        ValueError, match=r"evals.zs: retrieval: unknown config keys \['class_names'"
    ):
        evaluators.build_evaluators(
            {"zs": dict(evals.ret) | {"class_names": ["a"]}}, make_data=make_data
        )


def test_chunked_metrics_match_argsort_reference(monkeypatch):
    # Random (tie-free) embeddings, several captions per image, and a chunk smaller than N so
    # the chunked accumulation is exercised; the reference ranks by a full argsort.
    monkeypatch.setattr(metrics, "_CHUNK", 3)
    rng = np.random.default_rng(0)
    n, m, c, d = 7, 11, 5, 6
    image, text, classes = (metrics.l2_normalize(rng.normal(size=(k, d))) for k in (n, m, c))
    t2i = rng.integers(0, n, size=m)
    labels = rng.integers(0, c, size=n)

    def rank_of_first(scores, correct):  # scores [Q, K]; correct [Q, K] bool
        order = np.argsort(-scores, axis=1)
        return np.argmax(np.take_along_axis(correct, order, axis=1), axis=1)

    ks = (1, 2, 5)
    zs = metrics.zero_shot_accuracy(image, classes, labels, ks=ks)
    zs_rank = rank_of_first(image @ classes.T, labels[:, None] == np.arange(c))
    assert all(zs[f"top{k}"] == np.mean(zs_rank < k) for k in ks)

    out = metrics.retrieval_recall(image, text, t2i, ks=ks)
    own = t2i[None, :] == np.arange(n)[:, None]  # [N, M]
    has = own.any(axis=1)
    i2t_rank = rank_of_first((image @ text.T)[has], own[has])
    t2i_rank = rank_of_first(text @ image.T, own.T)
    for k in ks:
        assert out[f"i2t_r@{k}"] == np.mean(i2t_rank < k)
        assert out[f"t2i_r@{k}"] == np.mean(t2i_rank < k)


def test_grouped_retrieval_treats_identical_captions_as_one():
    # Images 0 and 1 share the caption "a red circle" (texts 0 and 1 are the same string, so
    # their embeddings are equal); image 2 has its own caption.
    image = np.array([[1.0, 0.1], [1.0, -0.1], [0.0, 1.0]])
    text = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    groups = np.array([0, 0, 1])
    # Per-image matching counts the tie between the equal texts 0 and 1 as a miss.
    plain = metrics.retrieval_recall(image, text, np.arange(3), ks=(1,))
    assert plain["i2t_r@1"] == pytest.approx(1 / 3) and plain["t2i_r@1"] == pytest.approx(1 / 3)
    grouped = metrics.grouped_retrieval_recall(image, text, groups, groups, ks=(1, 2))
    assert grouped["i2t_r@1"] == 1.0 and grouped["t2i_r@1"] == 1.0
    # Chance: image->text ranks the 2 distinct captions, one of them right; text->image ranks
    # the 3 images, texts 0/1 matching 2 of them and text 2 one.
    assert grouped["chance_i2t_r@1"] == 0.5 and grouped["chance_i2t_r@2"] == 1.0
    assert grouped["chance_t2i_r@2"] == pytest.approx((1 + 1 + (1 - 1 / 3)) / 3)
    # Groups change which pairs match, not the scores: swapping image 2 for a copy of image 0
    # makes every text's best match tie with a non-matching image (ties lose), and image 2
    # now prefers the red-circle texts over its own.
    worse = metrics.grouped_retrieval_recall(image[[0, 1, 0]], text, groups, groups, ks=(1,))
    assert worse["t2i_r@1"] == 0.0 and worse["i2t_r@1"] == pytest.approx(2 / 3)


def test_grouped_image_to_text_ranks_distinct_captions():
    # Six images share three captions A, B, C (two rows each, equal rows: equal texts). Scores
    # of each image with each caption; the rank of an image's caption among the 3 distinct
    # ones: image 0 prefers B (rank 1), image 3 prefers C (rank 1), image 4 prefers A and B
    # (rank 2), the others rank their own first. Counting rows instead, both copies of a
    # wrong caption would sit ahead (ranks 2, 2, 4) and R@2 would equal R@1.
    by_caption = np.array(
        [
            [0.5, 0.85, 0.1],
            [0.9, 0.2, 0.1],
            [0.1, 0.9, 0.2],
            [0.3, 0.4, 0.8],
            [0.7, 0.6, 0.5],
            [0.1, 0.2, 0.9],
        ]
    )
    groups = np.array([0, 0, 1, 1, 2, 2])
    image, text = embeddings_with_scores(by_caption[:, groups])
    out = metrics.grouped_retrieval_recall(image, text, groups, groups, ks=(1, 2, 3, 5))
    assert (out["i2t_r@1"], out["i2t_r@2"], out["i2t_r@3"]) == (3 / 6, 5 / 6, 1.0)
    assert "i2t_r@5" not in out  # only 3 distinct captions
    assert out["chance_i2t_r@1"] == pytest.approx(1 / 3)
    assert out["chance_i2t_r@2"] == pytest.approx(2 / 3)
    # Text->image stays per image: every caption's best image beats the other four images.
    assert out["t2i_r@1"] == 1.0 and out["t2i_r@5"] == 1.0
    # Chance over 6 images of which 2 match: 1 - C(4, k) / C(6, k).
    assert out["chance_t2i_r@1"] == pytest.approx(2 / 6)
    assert out["chance_t2i_r@2"] == pytest.approx(1 - 6 / 15)
    assert out["chance_t2i_r@3"] == pytest.approx(1 - 4 / 20)


def test_grouped_caption_scores_by_its_best_row():
    # Rows 0 and 2 hold one caption (0), embedded differently; image 0's caption is 1.
    image = np.array([[1.0, 0.0], [0.0, 1.0]])
    text = np.array([[0.6, 0.8], [0.8, 0.6], [0.85, np.sqrt(1 - 0.85**2)]])
    image_groups, text_groups = np.array([1, 0]), np.array([0, 1, 0])
    out = metrics.grouped_retrieval_recall(image, text, image_groups, text_groups, ks=(1,))
    # Image 0: caption 1 scores 0.8, caption 0 its best row 0.85 -> miss. Image 1: caption 0
    # scores 0.8 (row 0) against caption 1's 0.6 -> hit.
    assert out["i2t_r@1"] == 0.5
    # The order of the rows does not matter (a first-row rule would give 1.0, then 0.0).
    flipped = metrics.grouped_retrieval_recall(
        image, text[[2, 1, 0]], image_groups, text_groups, ks=(1,)
    )
    assert flipped["i2t_r@1"] == 0.5


_COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class ColourTokens:
    """A tokenizer stand-in: a caption's second word, a colour, is its one token (1, 2, 3)."""

    pad_id = 0

    def encode(self, texts, max_len):
        out = np.zeros((len(texts), max_len), np.int32)
        out[:, 0] = [list(_COLOURS).index(t.split()[1]) + 1 for t in texts]
        return out


def test_grouped_references_follow_a_swapped_user_image(tmp_path):
    # Pair 1's image is broken: the source gives pair 2 (green) in its place, so the split's
    # rows hold red, green, green, blue and their captions, not the listing's four captions.
    for i, (name, caption) in enumerate(
        [("red", "a red square"), ("broken", "a broken picture"), ("green", "a green square"),
         ("blue", "a blue square")]
    ):  # fmt: skip
        if name == "broken":
            (tmp_path / f"{i}.png").write_bytes(b"\x89PNG not an image")
        else:
            Image.new("RGB", (4, 4), _COLOURS[name]).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(caption)
    source = user_pairs.UserPairsSource(str(tmp_path))

    def batches_fn(indices=None):
        return pipeline.make_eval_batches(
            source, tokenizer=ColourTokens(), batch_size=3, image_size=4, max_len=2,
            indices=indices,
        )  # fmt: skip

    info = {"fields": ["caption", "image"], "captions": source.captions}
    config = dict(type="retrieval", data="d", split="test", batch_size=4, ks=(1,))
    ev = RetrievalEvaluator(
        dict(config, group_identical_captions=True),
        make_data=lambda spec, split: (batches_fn, info),
    )
    # Images embed as their colour (pixels normalised to [-1, 1]), captions as their token.
    predict = {
        "embed_image": lambda x: (np.asarray(x)[:, 0, 0, :] > 0).astype(np.float64),
        "embed_text": lambda t: np.eye(3)[np.asarray(t)[:, 0] - 1],
    }
    out = ev.run(predict)
    # Rows 1 and 2 share "a green square": one caption, found first by both green images.
    assert out["distinct_captions"] == 3.0
    assert out["i2t_r@1"] == 1.0 and out["t2i_r@1"] == 1.0
    assert out["chance_i2t_r@1"] == pytest.approx(1 / 3)
    assert [p for p, _ in source.skipped] == [str(tmp_path / "1.png")]
