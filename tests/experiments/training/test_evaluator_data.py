"""Evaluators against their data: checks before training, grouping by caption text, hard
negatives, references that follow a swapped user image, and a failing evaluator that loses no
other evaluator's results."""

import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from experiments.evaluators import metrics
from experiments.evaluators.captioning import CaptioningEvaluator
from experiments.evaluators.hard_negatives import HardNegativeEvaluator
from experiments.evaluators.retrieval import RetrievalEvaluator
from experiments.evaluators.zero_shot import ZeroShotEvaluator
from experiments.training import eval_runner, inputs, trainer
from tests.experiments.conftest import tiny_config


def _batches(rows):
    n = len(rows["image"])
    return lambda: iter([{**rows, "mask": np.ones(n, bool)}])


def _one_hot(ids, size=8):
    return np.eye(size)[np.asarray(ids).astype(int)]


def test_zero_shot_on_data_without_labels_fails_at_construction():
    info = {
        "fields": ["caption", "image"],
        "class_names": ["a"],
        "templates": ["{}"],
        "encode_texts": lambda t: np.zeros((len(t), 2), np.int32),
    }
    config = dict(type="zero_shot", data="user:x.csv", split="test", batch_size=2)
    with pytest.raises(ValueError, match=r"have no \['label'\] \(they have \['caption', 'image'"):
        ZeroShotEvaluator(config, make_data=lambda spec, split: (None, info))


def _retrieval_rows():
    # Rows 0 and 1 have captions whose token rows are equal (truncated), but distinct texts;
    # rows 2 and 3 have exactly the same caption text.
    image = np.zeros((4, 2, 2, 3), np.float32)
    image[:, 0, 0, 0] = [0, 1, 2, 3]
    tokens = np.array([[5, 6], [5, 6], [7, 0], [7, 0]], np.int32)
    captions = [
        "a red circle left of a blue square",
        "a red circle left of a green cross",
        "a cat",
        "a cat",
    ]
    return {"image": image, "tokens": tokens, "text_index": np.arange(4)}, captions


def _retrieval(group):
    rows, captions = _retrieval_rows()
    config = dict(
        type="retrieval",
        data="d",
        split="test",
        batch_size=4,
        ks=(1,),
        group_identical_captions=group,
    )
    info = {"fields": ["caption", "image"], "captions": lambda limit: captions[:limit]}
    ev = RetrievalEvaluator(config, make_data=lambda spec, split: (_batches(rows), info))
    # Text embeddings come from the token rows (so equal rows embed equally), images from ids:
    # image 1 is closest to caption 0's row and image 3 to caption 2's.
    embed_image = lambda x: _one_hot([0, 0, 2, 2])[np.asarray(x)[:, 0, 0, 0].astype(int)]
    embed_text = lambda t: _one_hot(np.where(np.asarray(t)[:, 0] == 5, 0, 2))
    return ev.run({"embed_image": embed_image, "embed_text": embed_text})


def test_retrieval_is_per_pair_by_default_and_groups_only_exact_texts():
    plain = _retrieval(group=False)
    assert "distinct_captions" not in plain
    assert plain["i2t_r@1"] == 0.0  # each image ties with another caption: ties lose
    grouped = _retrieval(group=True)
    assert grouped["distinct_captions"] == 3.0  # texts, not truncated token rows
    # Rows 2 and 3 now share one caption (both images hit it); rows 0 and 1 still tie.
    assert grouped["i2t_r@1"] == 0.5


def test_hard_negative_metric_counts_ties_as_wrong():
    image = np.eye(3)
    caption = np.array([[1.0, 0.1, 0], [0, 1, 0], [0, 0, 1]])
    negative = np.array([[0, 1.0, 0], [0, 1, 0], [1, 0, 0]])  # row 1 ties
    out = metrics.hard_negative_accuracy(image, caption, negative)
    assert out == {"accuracy": pytest.approx(2 / 3), "chance_accuracy": 0.5}


def test_hard_negative_evaluator_asks_for_negatives_and_scores_them():
    asked = {}
    rows = {
        "image": np.zeros((4, 2, 2, 3), np.float32),
        "tokens": np.array([[1], [2], [1], [2]], np.int32),
        "hard_negative_tokens": np.array([[2], [1], [1], [3]], np.int32),
    }
    rows["image"][:, 0, 0, 0] = [1, 2, 1, 3]

    def make_data(spec, split, *, extra_texts=()):
        asked["extra_texts"] = extra_texts
        return _batches(rows), {"fields": ["caption", "hard_negative", "image"]}

    config = dict(type="hard_negatives", data="d", split="test", batch_size=2)
    ev = HardNegativeEvaluator(config, make_data=make_data)
    assert asked["extra_texts"] == ("hard_negative",)
    out = ev.run(
        {
            "embed_image": lambda x: _one_hot(np.asarray(x)[:, 0, 0, 0]),
            "embed_text": lambda t: _one_hot(t[:, 0]),
        }
    )
    # Example 2's negative equals its caption (a tie: wrong); example 3's image is its negative.
    assert out == {"accuracy": 0.5, "chance_accuracy": 0.5, "num_examples": 4.0}
    with pytest.raises(ValueError, match=r"have no \['hard_negative'\]"):
        HardNegativeEvaluator(config, make_data=lambda *a, **k: (None, {"fields": ["image"]}))


_COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def test_captioning_references_follow_a_swapped_user_image(shapes_data_dir, tmp_path):
    # Pair 1's image is broken: the source reads pair 2 (green) in its place, so the rows hold
    # the red, green, green and blue images, each to be scored against its own caption.
    listing = ["image,caption,split"]
    for i, name in enumerate(["red", "broken", "green", "blue"]):
        if name == "broken":
            (tmp_path / f"{i}.png").write_bytes(b"\x89PNG not an image")
        else:
            Image.new("RGB", (8, 8), _COLOURS[name]).save(tmp_path / f"{i}.png")
        listing.append(f"{i}.png,a small {name} circle,test")
    (tmp_path / "pairs.csv").write_text("\n".join(listing) + "\n")
    data = inputs.Inputs(tiny_config(shapes_data_dir).data, global_batch_size=16, seed=0)
    tokenizer = data.tokenizer
    captions = [f"a small {name} circle" for name in _COLOURS]

    def generate(images, prompt, prompt_len, *, max_new_tokens, decode):
        # The caption of the image's colour (pixels are normalised to [-1, 1]).
        colour = np.asarray(images)[:, 0, 0, :].argmax(-1)
        return {"tokens": tokenizer.encode([captions[c] for c in colour], max_new_tokens)}

    spec = f"user:{tmp_path / 'pairs.csv'}"
    config = dict(type="captioning", data=spec, split="test", batch_size=3, max_new_tokens=16)
    ev = CaptioningEvaluator(config, make_data=data.make_eval_data)
    out = ev.run({"generate": generate})
    read = [f"a small {name} circle" for name in ("red", "green", "green", "blue")]
    assert [s["generated"] for s in ev.last_samples] == read
    assert [s["references"] for s in ev.last_samples] == [[c] for c in read]
    assert out["cider"] == pytest.approx(10.0, abs=1e-9)
    assert out["bleu4"] == pytest.approx(1.0, abs=1e-8)
    assert out["num_examples"] == 4.0


def test_a_failing_evaluator_loses_no_other_results(make_config, tmp_path, monkeypatch):
    config = make_config(steps=2)
    config.evals = ml_collections.ConfigDict(
        {
            name: dict(type=name, data="vlax_shapes", split="test", batch_size=16)
            for name in ("zero_shot", "retrieval")
        }
    )

    def broken(self, predict):
        raise RuntimeError("evaluator bug")

    monkeypatch.setattr(ZeroShotEvaluator, "run", broken)
    with pytest.raises(eval_runner.EvaluationError, match="zero_shot@2.*evaluator bug"):
        trainer.train(config, str(tmp_path))
    results = json.loads((tmp_path / eval_runner.RESULTS_FILE).read_text())["2"]
    assert results["zero_shot"] == {"error": "RuntimeError: evaluator bug"}
    assert results["retrieval"]["num_examples"] == 64.0
    assert (tmp_path / "checkpoints" / "2").is_dir()  # the final checkpoint was saved


def test_evaluator_config_errors_come_before_training(make_config, tmp_path, monkeypatch):
    from experiments.training import train_state

    def refuse(*args, **kwargs):
        raise AssertionError("built a train state before checking the evaluators")

    monkeypatch.setattr(train_state.StateBuilder, "__init__", refuse)
    config = make_config(steps=2)
    config.evals = dict(
        hard=dict(type="hard_negatives", data="vlax_shapes", split="tset", batch_size=16)
    )
    with pytest.raises(ValueError, match="tset"):
        trainer.setup(config)


def test_an_evaluator_needing_a_missing_method_fails_before_compiling(make_config, monkeypatch):
    from experiments import evaluators
    from experiments.training import train_state

    def refuse(*args, **kwargs):
        raise AssertionError("built a train state before checking the evaluators' methods")

    monkeypatch.setattr(train_state.StateBuilder, "__init__", refuse)
    monkeypatch.setattr(evaluators, "CONTRASTIVE_METHODS", ("embed_image", "generate"))
    config = make_config(steps=2)
    config.evals = {"zs": dict(type="zero_shot", data="vlax_shapes", split="test", batch_size=16)}
    with pytest.raises(
        ValueError, match=r"evals.zs needs the objective method\(s\) \['generate'\]"
    ):
        trainer.setup(config)
