"""Captioning and VQA evaluators end to end, with fake data and a fake `generate`."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from experiments import evaluators
from experiments.evaluators import text_metrics as tm
from experiments.evaluators.captioning import CaptioningEvaluator, best_constant, contact_sheet
from experiments.evaluators.vqa import VqaEvaluator

MAX_LEN = 6


def make_batches(rows, batch_size):
    """In-memory batches; the last one is padded with mask=False rows holding other examples'
    values + 1 (text_index -1, as the pipeline pads), so counting them would change every
    metric."""
    n = len(rows["image"])
    pad = -n % batch_size
    padded = {k: np.concatenate([v, v[:pad][::-1] + 1]) for k, v in rows.items()}
    padded["text_index"][n:] = -1
    padded["mask"] = np.arange(n + pad) < n
    return lambda: iter(
        [
            {k: v[i : i + batch_size] for k, v in padded.items()}
            for i in range(0, n + pad, batch_size)
        ]
    )


def rows(text_index):
    """Row i: image pixel [0, 0, 0] = i, prompt [10 i, 0, 0] with length 1, and the texts of
    source example text_index[i] (int64 [n])."""
    n = len(text_index)
    image = np.zeros((n, 4, 4, 3), np.float32)
    image[:, 0, 0, 0] = np.arange(n)
    prompt = np.zeros((n, 3), np.int32)
    prompt[:, 0] = 10 * np.arange(n)
    return {
        "image": image,
        "prompt": prompt,
        "prompt_len": np.ones(n, np.int32),
        "text_index": np.asarray(text_index, np.int64),
    }


class FakeData:
    """make_data for `references` (one entry per source example) and outputs[i] = the text
    generated for row i; row i holds the texts of source example text_index[i] (default i: no
    pair was swapped; the attribute may change between runs). Records the task asked for and
    the texts(...) calls."""

    def __init__(
        self, references, outputs, *, fields=("image", "caption"), text_index=None, **info
    ):
        self.references, self.outputs = list(references), list(outputs)
        self.text_index = np.arange(len(self.references)) if text_index is None else text_index
        self.info = dict(
            fields=list(fields),
            texts=self.texts,
            decode_tokens=self.decode_tokens,
            max_len=MAX_LEN,
            **info,
        )
        self.tasks, self.text_calls = [], []

    def __call__(self, spec, split, *, task):
        self.tasks.append(task)
        return lambda: make_batches(rows(self.text_index), 4)(), self.info

    def texts(self, field, limit):
        self.text_calls.append((field, limit))
        return self.references[:limit]

    def decode_tokens(self, ids):
        assert ids.ndim == 2 and (ids[:, 1:] == 0).all()  # EOS/pad after the first token
        return [self.outputs[i] for i in ids[:, 0]]


class FakeGenerate:
    """generate(...): token 0 = the image's id; checks prompts arrive with their images."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, prompt, prompt_len, *, max_new_tokens, decode):
        self.calls.append((images.shape, max_new_tokens, decode))
        ids = images[:, 0, 0, 0].astype(np.int32)
        valid = prompt_len > 0  # zero-padded rows of the last chunk have length 0
        assert (prompt[valid, 0] == 10 * ids[valid]).all()
        tokens = np.zeros((len(images), max_new_tokens), np.int32)
        tokens[:, 0] = ids
        return {"tokens": tokens, "scores": np.zeros(len(images), np.float32)}


def config(type_name, **overrides):
    base = dict(type=type_name, data="fake", split="test", batch_size=3, every_steps=5)
    return ml_collections.ConfigDict(base | overrides)


# ---------------------------------------------------------------- captioning

CAPTIONS = [
    "a red circle left of a blue square",
    "two green triangles above one star",
    "a small yellow star in the corner",
    "three blue circles in a row",
    "a big purple square on the right",
    "one orange triangle below a circle",
    "four tiny red squares at the top",
]


def test_captioning_perfect_captions_known_values_and_padding_ignored():
    data = FakeData(CAPTIONS, CAPTIONS)  # one reference string per example
    ev = CaptioningEvaluator(config("captioning"), make_data=data)
    assert (ev.every_steps, ev.methods, data.tasks) == (5, ("generate",), ["prefix_lm"])
    gen = FakeGenerate()
    out = ev.run({"generate": gen})
    # Distinct captions of >= 4 words reproduced exactly: CIDEr-D 10 (every n-gram order has
    # a cosine of 1), BLEU-4 1.
    assert out["cider"] == pytest.approx(10.0, abs=1e-9)
    assert out["bleu4"] == pytest.approx(1.0, abs=1e-8)
    assert out["num_examples"] == 7.0
    assert 0 < out["chance_cider"] < 10 and 0 <= out["chance_bleu4"] < 1
    # 7 valid rows in chunks of 3 (the last zero-padded); settings default from the data.
    assert gen.calls == [((3, 4, 4, 3), MAX_LEN, "greedy")] * 3
    assert data.text_calls == [("caption", 7)]
    assert ev.run({"generate": FakeGenerate()}) == out  # repeatable


def test_captioning_scores_equal_the_metrics_on_the_decoded_texts():
    refs = [[c, c.replace("a ", "one ")] for c in CAPTIONS]
    outputs = CAPTIONS[:4] + ["a red circle"] * 3
    data = FakeData(refs, outputs, fields=("image", "captions"))
    cfg = config("captioning", decode="beam:4", max_new_tokens=4)
    ev = CaptioningEvaluator(cfg, make_data=data)
    gen = FakeGenerate()
    out = ev.run({"generate": gen})
    assert out["cider"] == pytest.approx(tm.cider_d(outputs, refs), abs=1e-12)
    assert out["bleu4"] == pytest.approx(tm.bleu4(outputs, refs), abs=1e-12)
    assert 0 < out["cider"] < 10
    assert {c[1:] for c in gen.calls} == {(4, "beam:4")}
    assert data.text_calls == [("captions", 7)]  # "captions" preferred when the data has it


def test_captioning_max_examples():
    data = FakeData(CAPTIONS, CAPTIONS)
    gen = FakeGenerate()
    ev = CaptioningEvaluator(config("captioning", max_examples=4), make_data=data)
    out = ev.run({"generate": gen})
    assert out["num_examples"] == 4.0 and len(gen.calls) == 2
    assert data.text_calls == [("caption", 4)]


def test_captioning_references_follow_each_rows_text_index():
    # Pairs 1 and 6 were unreadable: pair 2 stood in for 1, and pair 0 (wrapping) for 6, so the
    # rows' images are those of pairs 0, 2, 2, 3, 4, 5, 0 and each generates its own caption.
    text_index = [0, 2, 2, 3, 4, 5, 0]
    used = [[CAPTIONS[j]] for j in text_index]
    data = FakeData(CAPTIONS, [CAPTIONS[j] for j in text_index], text_index=text_index)
    ev = CaptioningEvaluator(config("captioning", contact_sheet=7), make_data=data)
    out = ev.run({"generate": FakeGenerate()})
    # Every row's caption matches its own references exactly (rows 1 and 6 would not match
    # the captions of pairs 1 and 6).
    assert out["cider"] == pytest.approx(10.0, abs=1e-9)
    assert out["bleu4"] == pytest.approx(1.0, abs=1e-8)
    assert data.text_calls == [("caption", 6)]  # captions up to the largest index used
    assert [s["references"] for s in ev.last_samples] == used
    # The best constant caption is picked and scored over the same references; over the
    # source order's captions it would differ.
    assert out["chance_cider"] == pytest.approx(best_constant(used)["chance_cider"])
    assert out["chance_bleu4"] == pytest.approx(best_constant(used)["chance_bleu4"])
    in_order = best_constant([[c] for c in CAPTIONS])
    assert out["chance_cider"] != pytest.approx(in_order["chance_cider"])


def test_best_constant_is_the_best_frequent_caption():
    refs = [["a red circle"], ["a red circle"], ["a blue square"], ["two green stars"]]
    got = best_constant(refs, k=2)
    want = max(tm.cider_d([c] * 4, refs) for c in ("a red circle", "a blue square"))
    assert got["chance_cider"] == pytest.approx(want)
    assert got["chance_cider"] == pytest.approx(tm.cider_d(["a red circle"] * 4, refs))
    assert got["chance_bleu4"] == pytest.approx(tm.bleu4(["a red circle"] * 4, refs))


GRID = [(r, c) for r in range(2) for c in range(4)]


def test_captioning_contact_sheet(tmp_path):
    data = FakeData(CAPTIONS, CAPTIONS)
    ev = CaptioningEvaluator(config("captioning", contact_sheet=5), make_data=data)
    assert ev.write_artifacts(tmp_path, name="cap", step=3) == []  # nothing run yet
    ev.run({"generate": FakeGenerate()})
    assert [s["generated"] for s in ev.last_samples] == CAPTIONS[:5]
    paths = ev.write_artifacts(tmp_path / "sheets", name="cap", step=3)
    assert paths == [str(tmp_path / "sheets" / "cap_00000003.png")]
    sheet = np.asarray(Image.open(paths[0]).convert("RGB"))
    tile, tile_h = 160, 160 + 72
    assert sheet.shape == (2 * tile_h, 4 * tile, 3)  # 5 tiles: 4 columns, 2 rows
    cells = [sheet[r * tile_h : (r + 1) * tile_h, c * tile : (c + 1) * tile] for r, c in GRID]
    # Each used cell has a picture and caption text under it; the 3 unused cells are blank.
    assert [bool((cell[:tile] != 255).any()) for cell in cells] == [True] * 5 + [False] * 3
    assert [bool((cell[tile:] != 255).any()) for cell in cells] == [True] * 5 + [False] * 3

    ev = CaptioningEvaluator(config("captioning", contact_sheet=0), make_data=data)
    ev.run({"generate": FakeGenerate()})
    assert ev.write_artifacts(tmp_path / "none", name="cap", step=3) == []
    assert not (tmp_path / "none").exists()


def test_contact_sheet_fewer_images_than_columns():
    sheet = contact_sheet(np.zeros((2, 8, 8, 3)), ["a", "b"], [["x"], ["y"]], tile=32, cols=4)
    assert sheet.size == (2 * 32, 32 + 72)


def test_captioning_config_errors():
    data = FakeData(CAPTIONS, CAPTIONS)
    with pytest.raises(ValueError, match=r"unknown config keys \['beams'\]"):
        CaptioningEvaluator(config("captioning", beams=4), make_data=data)
    with pytest.raises(ValueError, match="decode must be one of"):
        CaptioningEvaluator(config("captioning", decode="beams:4"), make_data=data)
    with pytest.raises(ValueError, match="contact_sheet must be >= 0"):
        CaptioningEvaluator(config("captioning", contact_sheet=-1), make_data=data)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        CaptioningEvaluator(config("captioning", max_new_tokens=0), make_data=data)
    no_len = FakeData(CAPTIONS, CAPTIONS)
    del no_len.info["max_len"]
    with pytest.raises(ValueError, match="set max_new_tokens"):
        CaptioningEvaluator(config("captioning"), make_data=no_len)
    no_texts = FakeData(CAPTIONS, CAPTIONS)
    del no_texts.info["texts"]
    with pytest.raises(ValueError, match="the dataset info has no texts"):
        CaptioningEvaluator(config("captioning"), make_data=no_texts)
    no_field = FakeData(CAPTIONS, CAPTIONS, fields=("image",))
    with pytest.raises(ValueError, match=r"have no \['caption'\]"):
        CaptioningEvaluator(config("captioning"), make_data=no_field)
    with pytest.raises(ValueError, match="config type is 'vqa'"):
        CaptioningEvaluator(config("captioning", type="vqa"), make_data=data)


def test_captioning_run_errors():
    ev = CaptioningEvaluator(config("captioning"), make_data=FakeData(CAPTIONS, CAPTIONS))
    bad = lambda images, *a, **k: {"tokens": np.zeros((len(images) - 1, 2), np.int32)}
    with pytest.raises(ValueError, match=r"generate returned tokens \(2, 2\) for 3 rows"):
        ev.run({"generate": bad})
    short = FakeData(CAPTIONS, CAPTIONS)
    short.texts = lambda field, limit: CAPTIONS[:3]
    short.info["texts"] = short.texts
    ev = CaptioningEvaluator(config("captioning"), make_data=short)
    with pytest.raises(ValueError, match=r"text_index 0\.\.6, but the data has 3 text entries"):
        ev.run({"generate": FakeGenerate()})
    leaked = FakeData(CAPTIONS[:2], CAPTIONS[:2], text_index=[0, -1])  # a padding row's index
    ev = CaptioningEvaluator(config("captioning"), make_data=leaked)
    with pytest.raises(ValueError, match=r"text_index -1\.\.0, but the data has 1 text entries"):
        ev.run({"generate": FakeGenerate()})


# ---------------------------------------------------------------- VQA


def test_vqa_single_answers_exact_match_and_majority_chance():
    refs = ["2", "red", "yes", "no", "yes", "circle", "yes", "3"]
    preds = ["Two", "Red.", "yes", "yes", "no", "a circle", "yes", "three"]
    data = FakeData(refs, preds, fields=("image", "question", "answer"))
    ev = VqaEvaluator(config("vqa"), make_data=data)
    assert (ev.every_steps, ev.methods, data.tasks) == (5, ("generate",), ["vqa"])
    gen = FakeGenerate()
    out = ev.run({"generate": gen})
    # Misses: 3 ("yes" for "no") and 4; the majority answer "yes" is right 3 times in 8.
    assert out == {"accuracy": 0.75, "chance_accuracy": 0.375, "num_examples": 8.0}
    assert gen.calls == [((3, 4, 4, 3), MAX_LEN, "greedy")] * 3
    assert data.text_calls == [("answer", 8)]


def test_vqa_soft_accuracy_with_ten_answers_and_max_examples():
    refs = [
        ["two"] * 3 + ["3"] * 7,  # "2": 3 matches -> 0.9
        ["red"] * 1 + ["blue"] * 9,  # "red": 1 match -> 0.3
        ["yes"] * 10,  # "yes" -> 1.0
        ["no"] * 10,  # dropped by max_examples
    ]
    data = FakeData(refs, ["2", "Red", "yes!", "no"], fields=("image", "answers"))
    ev = VqaEvaluator(config("vqa", max_examples=3), make_data=data)
    out = ev.run({"generate": FakeGenerate()})
    assert out["accuracy"] == pytest.approx((0.9 + 0.3 + 1.0) / 3)
    assert out["num_examples"] == 3.0
    # Majority: "yes" (10 of 30 answers) scores 0, 0, 1; "blue" has 9, "3" has 7.
    assert out["chance_accuracy"] == pytest.approx(1 / 3)
    assert data.text_calls == [("answers", 3)]


def test_vqa_references_and_majority_follow_each_rows_text_index():
    # Pairs 1, 3 and 4 were unreadable: rows hold the texts of pairs 0, 2, 2, 2, 5, 5.
    refs = ["yes", "no", "red", "yes", "blue", "2"]
    preds = ["yes", "red", "Red", "blue", "2", "two"]
    data = FakeData(refs, preds, fields=("image", "answer"), text_index=[0, 2, 2, 2, 5, 5])
    ev = VqaEvaluator(config("vqa"), make_data=data)
    out = ev.run({"generate": FakeGenerate()})
    # Row references: yes, red, red, red, 2, 2. Only row 3 ("blue" for "red") misses; the
    # majority answer of those references is "red" (3 of 6).
    assert out == {"accuracy": 5 / 6, "chance_accuracy": 0.5, "num_examples": 6.0}
    assert data.text_calls == [("answer", 6)]
    # A later run whose rows are the listing's own pairs scores against those: rows 1, 3 and 4
    # miss, and the majority "yes" is right twice.
    data.text_index = np.arange(6)
    out = ev.run({"generate": FakeGenerate()})
    assert out == {"accuracy": 0.5, "chance_accuracy": pytest.approx(1 / 3), "num_examples": 6.0}


def test_vqa_config_errors_and_registry():
    assert evaluators.get_evaluator("vqa") is VqaEvaluator
    assert evaluators.get_evaluator("captioning") is CaptioningEvaluator
    data = FakeData(["yes"], ["yes"], fields=("image", "question"))
    with pytest.raises(ValueError, match=r"have no \['answer'\]"):
        VqaEvaluator(config("vqa"), make_data=data)
    with pytest.raises(ValueError, match="unknown config keys"):
        VqaEvaluator(config("vqa", contact_sheet=4), make_data=data)
    with pytest.raises(ValueError, match="decode must be one of"):
        VqaEvaluator(config("vqa", decode=4, references="question"), make_data=data)
    empty = FakeData([], [], fields=("image", "answer"))
    ev = VqaEvaluator(config("vqa"), make_data=empty)
    with pytest.raises(ValueError, match="no valid"):
        ev.run({"generate": FakeGenerate()})
    built = evaluators.build_evaluators(
        {"vqa": config("vqa", references="question")}, make_data=data
    )
    assert isinstance(built["vqa"], VqaEvaluator) and built["vqa"].data.field == "question"
