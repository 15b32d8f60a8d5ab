"""Synthetic VQA (answers true to the pixels), its tfds build and the text-only caption corpus."""

import collections
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data import shapes, shapes_tfds, shapes_vqa, shapes_vqa_tfds, sources, text_corpus

_SINGULAR = {"circles": "circle", "squares": "square", "triangles": "triangle", "crosses": "cross"}
_NUMBERS = {0: "zero", 1: "one", 2: "two"}


# ---------------------------------------------------------------- reading a scene off its pixels


def _objects_in(image: np.ndarray) -> dict[str, dict]:
    """colour -> {"shape", "size", "centre" [x, y]} of each palette colour drawn in `image`,
    measured from the pixels alone (64 px images)."""
    found = {}
    for color, rgb in shapes.COLORS.items():
        mask = np.linalg.norm(image.astype(np.float32) - np.array(rgb), axis=-1) < 60
        if mask.sum() < 20:  # stray noisy pixels are not an object
            continue
        ys, xs = np.nonzero(mask)
        rows = mask[ys.min() : ys.max() + 1].sum(1)
        q = max(1, len(rows) // 4)
        top, bottom = rows[:q].mean(), rows[-q:].mean()
        middle = rows[len(rows) // 2 - q // 2 : len(rows) // 2 + q // 2 + 1].mean()
        if top / bottom < 0.45:  # a point on top, a wide base
            shape = "triangle"
        elif middle / max(top, bottom) > 2.45:  # thin arms above and below a full bar
            shape = "cross"
        elif middle / max(top, bottom) < 1.15:  # as wide at the middle as at the edges
            shape = "square"
        else:
            shape = "circle"
        extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        size = "large" if extent >= 18 else "small"
        found[color] = {"shape": shape, "size": size, "centre": np.array([xs.mean(), ys.mean()])}
    return found


def _pixel_answer(question: str, image: np.ndarray) -> str:
    """The answer to one of data.shapes_vqa's questions, computed from the image alone."""
    objs = _objects_in(image)

    def find(color=None, shape=None, size=None):
        return [
            c
            for c, o in objs.items()
            if (color in (None, c)) and (shape in (None, o["shape"])) and size in (None, o["size"])
        ]

    if m := re.fullmatch(r"what colour is the (?:(small|large) )?(\w+)\?", question):
        (color,) = find(shape=m[2], size=m[1])  # named uniquely, or the question is wrong
        return color
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        return objs[m[1]]["shape"]
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", question):
        assert objs[m[1]]["shape"] == m[2]
        return objs[m[1]]["size"]
    if question == "how many objects are there?":
        return _NUMBERS[len(objs)]
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        return _NUMBERS[len(find(shape=_SINGULAR[m[1]]))]
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        return "yes" if find(color=m[1], shape=m[2]) else "no"
    m = re.fullmatch(
        r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?", question
    )
    assert m is not None, question
    a, b = objs[m[1]], objs[m[4]]
    assert (a["shape"], b["shape"]) == (m[2], m[5])
    axis, sign = shapes.RELATIONS[m[3]]
    return "yes" if sign * (b["centre"][axis] - a["centre"][axis]) > 0 else "no"


def test_answers_are_true_to_the_pixels():
    seen = collections.Counter()
    for index in range(150):
        image, scene, questions = shapes_vqa.scene_questions(17, index, 3, image_size=64)
        assert len(questions) == 3 and len({kind for *_, kind in questions}) == 3
        for question, answer, kind in questions:
            assert answer in shapes_vqa.ANSWERS and kind in shapes_vqa.QUESTION_TYPES
            assert _pixel_answer(question, image) == answer, (scene.caption, question, answer)
            seen[kind] += 1
            seen[answer] += 1
    assert set(shapes_vqa.QUESTION_TYPES) <= set(seen)  # every type was asked and checked
    assert seen["yes"] > 20 and seen["no"] > 20


def test_scenes_are_vlax_shapes_scenes_and_questions_deterministic(other_process):
    seed = shapes_tfds.SPLIT_SEEDS["test"]
    image, scene, questions = shapes_vqa.scene_questions(seed, 4, 5, image_size=32)
    plain = shapes.render_indexed(seed, 4, image_size=32)
    np.testing.assert_array_equal(image, plain["image"])
    assert scene.caption == plain["caption"] and scene.label == plain["label"]
    # Without rendering: the same scene and questions (drawing takes nothing from the stream).
    none, same, again = shapes_vqa.scene_questions(seed, 4, 5, image_size=32, render=False)
    assert none is None and same == scene and again == questions
    assert len(questions) == 5  # five types apply to every scene
    # Another process (another string hash seed) asks the same questions.
    there = other_process(
        "from data import shapes_vqa\n"
        f"print(repr(shapes_vqa.scene_questions({seed}, 4, 5, image_size=32, render=False)[2]))"
    )
    assert there.strip() == repr(questions)


def test_yes_and_no_are_balanced():
    answers = collections.Counter()
    for index in range(2000):
        _, _, questions = shapes_vqa.scene_questions(5, index, 5, render=False)
        answers.update(a for q, a, kind in questions if kind in ("relation", "exists"))
    assert abs(answers["yes"] - answers["no"]) < 0.06 * (answers["yes"] + answers["no"])


def _questions(split: str, num_scenes: int) -> list[tuple[str, str, str]]:
    seed = shapes_tfds.SPLIT_SEEDS[split]
    out = []
    for s in range(num_scenes):
        out += shapes_vqa.scene_questions(seed, s, 3, render=False)[2]
    return out


def test_documented_baselines_of_the_default_build():
    cfg = shapes_vqa_tfds.VlaxShapesVqa.BUILDER_CONFIGS[0]
    train = _questions("train", cfg.train_size)
    test = _questions("test", cfg.test_size)
    counts = collections.Counter(a for _, a, _ in test)
    answer, count = counts.most_common(1)[0]
    assert (answer, count, len(test)) == shapes_vqa_tfds.TEST_MAJORITY
    train_counts = collections.Counter(a for _, a, _ in train)
    assert train_counts.most_common(1)[0] == (shapes_vqa_tfds.MAJORITY_ANSWER, 4056)
    assert counts[shapes_vqa_tfds.MAJORITY_ANSWER] == 413
    # The blind language priors stated in the docstring.
    for key, expected in ((lambda q: q[0], 1257), (lambda q: q[2], 1164)):
        prior = collections.defaultdict(collections.Counter)
        for q in train:
            prior[key(q)][q[1]] += 1
        best = {k: c.most_common(1)[0][0] for k, c in prior.items()}
        hits = sum(best.get(key(q), shapes_vqa_tfds.MAJORITY_ANSWER) == q[1] for q in test)
        assert hits == expected


# ---------------------------------------------------------------- tfds build and source


_VQA_KW = dict(image_size=32, train_size=6, test_size=4, questions_per_scene=2)


@pytest.fixture(scope="module")
def vqa_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("vqa_tfds"))
    sources.get_source("vlax_shapes_vqa", "train", data_dir=data_dir, **_VQA_KW)
    return data_dir


def test_vqa_source_is_generated_on_first_use_and_reads_back(vqa_dir, monkeypatch):
    train = sources.get_source("vlax_shapes_vqa", "train", data_dir=vqa_dir, **_VQA_KW)
    test = sources.get_source("vlax_shapes_vqa", "test[:3]", data_dir=vqa_dir, **_VQA_KW)
    assert (len(train), len(test)) == (12, 3)
    expected = set(train.fields)
    assert expected == {"image", "question", "answer", "question_type", "caption", "label", "scene"}
    stored = collections.Counter()
    for i in range(len(train)):
        ex = train[i]
        assert set(ex) == expected and ex["image"].shape == (32, 32, 3)
        assert isinstance(ex["scene"], int) and isinstance(ex["question"], str)
        stored[ex["scene"], ex["question"], ex["answer"], ex["caption"]] += 1
    seed = shapes_tfds.SPLIT_SEEDS["train"]
    generated = collections.Counter()
    for s in range(6):
        _, scene, questions = shapes_vqa.scene_questions(seed, s, 2, 32, render=False)
        generated.update((s, q, a, scene.caption) for q, a, _ in questions)
    assert stored == generated  # tfds shuffles the stored order: compare as multisets

    by_index = [train[i]["answer"] for i in range(len(train))]

    def no_decode(*args, **kwargs):
        raise AssertionError("texts() decoded an image")

    monkeypatch.setattr(tfds.features.Image, "decode_example_np", no_decode)
    monkeypatch.setattr(Image, "open", no_decode)
    assert train.texts("answer") == by_index and len(train.texts("question", 5)) == 5
    assert sources.read_texts(train, "answer", 3) == by_index[:3]
    with pytest.raises(ValueError, match="no text field 'scene'"):
        train.texts("scene")


def test_vqa_spec_options_and_info(vqa_dir):
    with pytest.raises(TypeError, match="questions_per_scen"):
        sources.get_source("vlax_shapes_vqa", "train", data_dir=vqa_dir, questions_per_scen=2)
    with pytest.raises(ValueError, match="questions_per_scene must be in"):
        shapes_vqa_tfds.make_config(questions_per_scene=6)
    info = sources.dataset_info("vlax_shapes_vqa")
    assert info["answers"] == list(shapes_vqa.ANSWERS) and info["majority_answer"] == "yes"
    assert len(set(info["answers"])) == 17


# ---------------------------------------------------------------- text-only corpus


def test_text_corpus_is_the_shapes_grammar_without_images(monkeypatch):
    train = sources.get_source("vlax_shapes_text", "train", train_size=50)
    assert len(train) == 50 and train.fields == ("caption",)
    assert set(train[0]) == {"caption"} and train[0]["caption"].startswith("a ")
    assert train.texts("caption") == [train[i]["caption"] for i in range(50)]
    assert train.captions(3) == train.texts("caption")[:3]
    part = sources.get_source("vlax_shapes_text", "train[10:20]", train_size=50)
    assert part.texts("caption") == train.texts("caption")[10:20]
    assert len(sources.get_source("vlax_shapes_text", "test")) == text_corpus.DEFAULT_SIZES["test"]
    # Its own seeds: not vlax_shapes' paired captions, though from the same grammar.
    paired = [shapes.render_indexed(shapes_tfds.SPLIT_SEEDS["train"], i, 32) for i in range(50)]
    assert train.texts("caption") != [ex["caption"] for ex in paired]
    words = {w for ex in paired for w in ex["caption"].split()}
    assert {w for t in train.texts("caption") for w in t.split()} <= words | set(shapes.COLORS) | {
        *shapes.SHAPES,
        *shapes.SIZES,
        "left",
        "right",
        "of",
        "above",
        "below",
    }
    monkeypatch.setattr(shapes, "_render", lambda *a: pytest.fail("rendered an image"))
    assert text_corpus.ShapesTextSource("train", 5).texts("caption") == train.texts("caption")[:5]
    with pytest.raises(ValueError, match="only the field 'caption'"):
        train.texts("answer")
    with pytest.raises(ValueError, match="no split 'val'"):
        sources.get_source("vlax_shapes_text", "val")
    with pytest.raises(TypeError, match="image_size"):
        sources.get_source("vlax_shapes_text", "train", image_size=32)
    assert sources.dataset_info("vlax_shapes_text") == {}
