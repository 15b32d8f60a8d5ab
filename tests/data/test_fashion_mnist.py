"""Fashion-MNIST from IDX files (tiny synthetic ones here, never the real data) and the LiT
config that trains on it with the locked MiniLM text tower."""

import gzip

import jax
import numpy as np
import pytest

import objectives
from data import fashion_mnist, sources
from data import tokenizer as tokenizer_lib
from experiments.evaluators import build_evaluators
from experiments.interop import hf_bert
from experiments.training import config_utils, inputs, model_config, run_spec

CONFIG = "experiments/configs/lit/minilm_fashion.py"
SIZES = {"train": 23, "test": 7}


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_idx(folder, split: str, images: np.ndarray, labels: np.ndarray, *, gz: bool):
    prefix = fashion_mnist.SPLITS[split]
    for kind, rank, array in (("images", 3, images), ("labels", 1, labels)):
        data = _idx_bytes(array)
        name = f"{prefix}-{kind}-idx{rank}-ubyte"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def _split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Image i is filled with the value i (its row 0 with 255 - i); labels cycle 3, 4, ..."""
    n = SIZES[split]
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 28, 28)).copy()
    images[:, 0] = 255 - np.arange(n, dtype=np.uint8)[:, None]
    labels = (np.arange(n) + 3) % 10
    return images, labels


def _write_dataset(folder) -> None:
    """The train split gzip'd (as Debian ships it), the test split plain."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in SIZES:
        _write_idx(folder, split, *_split_arrays(split), gz=split == "train")


@pytest.fixture
def idx_dir(tmp_path):
    _write_dataset(tmp_path / "fashion-mnist")
    return tmp_path / "fashion-mnist"


def test_examples_have_grey_rgb_images_labels_and_template_captions(idx_dir):
    src = sources.get_source("fashion_mnist", "train", data_dir=idx_dir)
    images, labels = _split_arrays("train")
    assert len(src) == SIZES["train"]
    for i in (0, 1, 5, 22, -1):
        ex = src[i]
        j = i % len(src)
        assert sorted(ex) == ["caption", "image", "label"]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (28, 28, 3)
        for channel in range(3):
            np.testing.assert_array_equal(ex["image"][..., channel], images[j])
        assert ex["label"] == labels[j] and isinstance(ex["label"], int)
        template = fashion_mnist.CAPTION_TEMPLATES[fashion_mnist.template_index(j)]
        assert ex["caption"] == template.format(fashion_mnist.CLASS_NAMES[labels[j]])
    # Fixed: captions are part of what a run trains on (labels 3, 4 and 9).
    assert src[0]["caption"] == "a photo of a dress."
    assert src[1]["caption"] == "a low resolution photo of a coat."
    assert src[6]["caption"] == "a low resolution photo of a ankle boot."
    with pytest.raises(IndexError):
        src[SIZES["train"]]
    test = sources.get_source("fashion_mnist", "test", data_dir=idx_dir)  # the plain files
    assert len(test) == SIZES["test"] and test[6]["label"] == 9


def test_captions_match_examples_without_reading_images(idx_dir):
    src = sources.get_source("fashion_mnist", "train", data_dir=idx_dir)
    expected = [src[i]["caption"] for i in range(len(src))]
    src.images = None  # captions() must not touch the pixels
    assert src.captions() == expected
    assert src.captions(4) == expected[:4]
    assert src.captions(10_000) == expected


def test_templates_do_not_follow_the_files_order():
    # Labels stored in a repeating order (here 0..9, as the synthetic files have) must not
    # pair each class with a single template, as `index % 5` would.
    pairs = {(i % 10, fashion_mnist.template_index(i)) for i in range(200)}
    assert len(pairs) == 10 * len(fashion_mnist.CAPTION_TEMPLATES)
    counts = np.bincount([fashion_mnist.template_index(i) for i in range(60_000)])
    assert counts.min() > 0.19 * 60_000


@pytest.mark.parametrize(
    "split, start, stop",
    [("train[:40%]", 0, 9), ("train[5:]", 5, 23), ("train[-3:]", 20, 23), ("test[2:4]", 2, 4)],
)
def test_splits_slice_tfds_style_and_keep_each_examples_caption(idx_dir, split, start, stop):
    name = split.partition("[")[0]
    full = sources.get_source("fashion_mnist", name, data_dir=idx_dir)
    part = sources.get_source("fashion_mnist", split, data_dir=idx_dir)
    assert len(part) == stop - start
    for i in range(len(part)):
        ex, want = part[i], full[start + i]
        np.testing.assert_array_equal(ex["image"], want["image"])
        assert (ex["label"], ex["caption"]) == (want["label"], want["caption"])
    assert part.captions() == full.captions()[start:stop]


def test_bad_splits_and_options(idx_dir):
    with pytest.raises(ValueError, match="no split 'validation'"):
        sources.get_source("fashion_mnist", "validation", data_dir=idx_dir)
    with pytest.raises(ValueError, match="selects no examples"):
        sources.get_source("fashion_mnist", "test[7:]", data_dir=idx_dir)
    with pytest.raises(TypeError, match="Unexpected options"):
        sources.get_source("fashion_mnist", "train", data_dir=idx_dir, image_size=32)


def test_missing_data_names_the_debian_package(tmp_path):
    with pytest.raises(
        sources.DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"
    ):
        sources.get_source("fashion_mnist", "train", data_dir=tmp_path / "absent")
    # A folder holding only the test split still lacks the training files.
    partial = tmp_path / "partial"
    partial.mkdir()
    _write_idx(partial, "test", *_split_arrays("test"), gz=True)
    assert len(sources.get_source("fashion_mnist", "test", data_dir=partial)) == SIZES["test"]
    with pytest.raises(sources.DatasetNotFoundError, match="train-images-idx3-ubyte"):
        sources.get_source("fashion_mnist", "train", data_dir=partial)


def test_malformed_idx_files_are_rejected(tmp_path):
    images, labels = _split_arrays("test")
    bad_magic = tmp_path / "magic"
    bad_magic.mkdir()
    _write_idx(bad_magic, "test", images, labels, gz=False)
    (bad_magic / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + bytes(8))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        fashion_mnist.FashionMnistSource(bad_magic, "test")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    _write_idx(truncated, "test", images, labels, gz=False)
    path = truncated / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="IDX header says shape"):
        fashion_mnist.FashionMnistSource(truncated, "test")
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    _write_idx(mismatch, "test", images, labels[:-1], gz=False)
    with pytest.raises(ValueError, match="7 test images but labels"):
        fashion_mnist.FashionMnistSource(mismatch, "test")


def test_reads_from_gcs(gcs, idx_dir):
    for path in idx_dir.iterdir():
        (gcs / path.name).write_bytes(path.read_bytes())
    remote = sources.get_source("fashion_mnist", "train[:4]", data_dir=str(gcs))
    local = sources.get_source("fashion_mnist", "train[:4]", data_dir=idx_dir)
    assert remote.captions() == local.captions()
    np.testing.assert_array_equal(remote[3]["image"], local[3]["image"])


def test_dataset_info_has_class_names_and_held_out_prompts(tmp_path):
    # Needs no data: evaluators read it before any example.
    info = sources.dataset_info("fashion_mnist", data_dir=tmp_path / "absent")
    assert info["class_names"][0] == "t-shirt" and info["class_names"][-1] == "ankle boot"
    assert len(info["class_names"]) == 10
    assert all("{}" in t for t in info["prompt_templates"])
    assert not set(info["prompt_templates"]) & set(fashion_mnist.CAPTION_TEMPLATES)


def test_minilm_tokenizer_fits_every_caption_and_prompt_in_the_configs_max_len():
    tok = tokenizer_lib.get_tokenizer(str(hf_bert.minilm_dir() / "tokenizer.json"))
    texts = [
        t.format(name)
        for t in fashion_mnist.CAPTION_TEMPLATES + fashion_mnist.PROMPT_TEMPLATES
        for name in fashion_mnist.CLASS_NAMES
    ]
    max_len = config_utils.load_config(CONFIG).data.max_len
    assert tokenizer_lib.truncation_stats(tok, texts, max_len)["num_truncated"] == 0


@pytest.mark.parametrize("arg", ["", ":runlocal", ":patch=7,steps=50,lr=3e-4"])
def test_config_loads_and_validates_without_the_data(arg):
    config = config_utils.load_config(CONFIG + arg)
    run_spec.check(config, num_devices=jax.device_count())
    minilm = str(hf_bert.minilm_dir())
    assert config.init.hf == minilm and tuple(config.init.load) == ("txt",)
    assert tuple(config.optim.freeze) == ("txt/.*",)
    assert config.data.tokenizer.model == f"{minilm}/tokenizer.json"
    # LiT proper: the whole text tower is MiniLM (no head); the image tower projects to 384.
    text = config.model.text
    assert (text.width, text.depth, text.vocab_size, text.pool_type) == (384, 6, 30522, "mean")
    assert text.post_norm and text.num_classes is None
    assert config.model.image.num_classes == 384
    assert config.data.image_size % config.model.image.patch_size == 0
    assert "total_steps" not in config.optim  # the schedule spans config.total_steps
    if arg == ":runlocal":
        assert config.total_steps <= 20 and config.evals.zero_shot.split == "test[:512]"


def test_config_data_and_evals_build_on_synthetic_idx_files(idx_dir):
    """The data side of the run, as the trainer builds it: MiniLM's tokenizer, the train
    source, zero-shot prompts from the dataset info and retrieval; the towers' config."""
    config = config_utils.load_config(CONFIG, [f"data.data_dir={idx_dir}"])
    data = inputs.Inputs(config.data, global_batch_size=config.batch_size, seed=0)
    assert len(data.train_source) == SIZES["train"]
    evaluators = build_evaluators(config.evals, make_data=data.make_eval_data)
    zero_shot = evaluators["zero_shot"]
    assert zero_shot.class_names == list(fashion_mnist.CLASS_NAMES)
    assert zero_shot.templates == list(fashion_mnist.PROMPT_TEMPLATES)
    assert zero_shot.prompt_tokens.shape == (10 * len(fashion_mnist.PROMPT_TEMPLATES), 16)
    assert zero_shot.prompt_tokens[0, 0] == data.tokenizer.bos_id  # [CLS]
    towers = model_config.complete(
        objectives.get_objective(config.objective), config.model, data.model_fields()
    )
    assert towers["text"]["vocab_size"] == data.tokenizer.vocab_size == 30522
