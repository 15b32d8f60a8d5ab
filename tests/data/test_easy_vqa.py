"""The easy-VQA loader: on a tiny copy of the package's layout, and on the real package's files."""

import collections
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from data import easy_vqa, sources
from data.pipeline import make_eval_batches, make_train_iterator
from data.tokenizer import Tokenizer, train_sentencepiece

_QUESTIONS = {
    "train": [
        ["what color is the shape?", "red", 0],
        ["is there a circle?", "yes", 0],
        ["what is the blue shape?", "rectangle", 1],
    ],
    "test": [["does the image not contain a triangle?", "no", 0]],
}


@pytest.fixture
def fake_root(tmp_path):
    """easy_vqa/data as the wheel lays it out, with 2 train images and 1 test image."""
    (tmp_path / "answers.txt").write_text("circle\nred\nyes\nrectangle\nblue\nno\n")
    for split, rows in _QUESTIONS.items():
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "questions.json").write_text(json.dumps(rows))
        for image_id in {r[2] for r in rows}:
            color = (40 * image_id + 10, 20, 30)
            Image.new("RGB", (64, 64), color).save(tmp_path / split / "images" / f"{image_id}.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0")  # the real wheel ships one too
    return tmp_path


def test_fake_copy_reads_questions_images_and_texts(fake_root, monkeypatch):
    src = sources.get_source("easy_vqa", "train", root=str(fake_root), data_dir="/nowhere")
    assert len(src) == 3 and set(src.fields) == {"image", "question", "answer", "image_id"}
    ex = src[2]
    assert ex["question"] == "what is the blue shape?" and ex["answer"] == "rectangle"
    assert ex["image_id"] == 1 and ex["image"].shape == (64, 64, 3)
    assert ex["image"].dtype == np.uint8 and tuple(ex["image"][0, 0]) == (50, 20, 30)
    monkeypatch.setattr(Image, "open", lambda *a: pytest.fail("texts() opened an image"))
    assert src.texts("answer") == ["red", "yes", "rectangle"]
    assert src.texts("question", 1) == ["what color is the shape?"]
    assert sources.read_texts(src, "answer", 2) == ["red", "yes"]
    part = sources.get_source("easy_vqa", "train[1:]", root=str(fake_root))
    assert part.texts("answer") == ["yes", "rectangle"]
    with pytest.raises(ValueError, match="text fields"):
        src.texts("image_id")
    with pytest.raises(ValueError, match="no captions"):
        src.captions()
    test = sources.get_source("easy_vqa", "test", root=str(fake_root))
    assert test.texts("answer") == ["no"]


def test_errors(fake_root, tmp_path_factory):
    with pytest.raises(ValueError, match="no split 'validation'"):
        sources.get_source("easy_vqa", "validation", root=str(fake_root))
    with pytest.raises(ValueError, match="selects no examples"):
        sources.get_source("easy_vqa", "test[1:]", root=str(fake_root))
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(sources.DatasetNotFoundError, match="easy-vqa==1.0"):
        sources.get_source("easy_vqa", "train", root=str(empty))
    with pytest.raises(TypeError, match="image_size"):
        sources.get_source("easy_vqa", "train", root=str(fake_root), image_size=32)
    (fake_root / "train" / "questions.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="expected a list"):
        sources.get_source("easy_vqa", "train", root=str(fake_root))


_INSTALLED = importlib.util.find_spec("easy_vqa") is not None


@pytest.mark.skipif(not _INSTALLED, reason="easy-vqa==1.0 (requirements.txt) not installed")
def test_real_package_sizes_and_documented_baselines():
    train = sources.get_source("easy_vqa", "train")
    test = sources.get_source("easy_vqa", "test")
    assert (len(train), len(test)) == (38_575, 9_673)
    assert len({i for *_, i in train.questions}) == 4_000
    assert len({i for *_, i in test.questions}) == 1_000
    info = sources.dataset_info("easy_vqa")
    assert len(info["answers"]) == 13 and info["majority_answer"] == easy_vqa.MAJORITY_ANSWER
    train_counts = collections.Counter(train.texts("answer"))
    test_counts = collections.Counter(test.texts("answer"))
    assert set(train_counts) | set(test_counts) == set(info["answers"])
    assert train_counts.most_common(1)[0] == ("yes", 14_229)
    assert test_counts.most_common(1)[0] == ("yes", 3_611)  # 37.3% of 9,673
    prior = collections.defaultdict(collections.Counter)
    for question, answer in zip(train.texts("question"), train.texts("answer"), strict=True):
        prior[question][answer] += 1
    best = {q: c.most_common(1)[0][0] for q, c in prior.items()}
    hits = sum(
        best.get(q, "yes") == a
        for q, a in zip(test.texts("question"), test.texts("answer"), strict=True)
    )
    assert hits == 6_481  # 67.0%: the blind language prior
    ex = test[0]
    assert ex["image"].shape == (64, 64, 3) and ex["answer"] in info["answers"]


def test_vqa_task_batches_from_the_fake_copy(fake_root, tmp_path_factory):
    src = sources.get_source("easy_vqa", "train", root=str(fake_root))
    corpus = src.texts("question") + src.texts("answer")
    prefix = str(tmp_path_factory.mktemp("spm") / "t")
    tok = Tokenizer(train_sentencepiece(corpus * 5, prefix, 60))
    kw = dict(tokenizer=tok, image_size=16, max_len=32, task="vqa")
    it = make_train_iterator(
        src, global_batch_size=3, seed=0, process_index=0, process_count=1, **kw
    )
    batch = next(it)
    # The loss target (from prefix_len to the EOS) is each row's answer.
    answers = [
        tok.decode([row[k:]])[0]
        for row, k in zip(batch["tokens"], batch["prefix_len"], strict=True)
    ]
    assert answers == [src.texts("answer")[i] for i in batch["index"]]
    prompts = next(make_eval_batches(src, batch_size=4, **kw))
    assert tok.decode(prompts["prompt"][:3]) == src.texts("question")
