"""Resolving data specs: the built-in dataset, prepared tfds datasets, user data, errors."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data import shapes, sources

_SHAPES_KW = dict(image_size=32, train_size=16, test_size=8)
_SHAPES_CONFIG = "s32_n16-8_p50"


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """A data_dir in which get_source has prepared the built-in dataset."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    sources.get_source("vlax_shapes", "train", data_dir=data_dir, **_SHAPES_KW)
    return data_dir


def test_builtin_dataset_is_prepared_on_first_use(shapes_dir):
    version_dir = os.path.join(shapes_dir, "vlax_shapes", _SHAPES_CONFIG, "1.0.0")
    assert os.path.isfile(os.path.join(version_dir, "dataset_info.json"))
    stamp = os.path.getmtime(os.path.join(version_dir, "dataset_info.json"))

    train = sources.get_source("vlax_shapes", "train", data_dir=shapes_dir, **_SHAPES_KW)
    test = sources.get_source("vlax_shapes", "test", data_dir=shapes_dir, **_SHAPES_KW)
    assert (len(train), len(test)) == (16, 8)
    assert os.path.getmtime(os.path.join(version_dir, "dataset_info.json")) == stamp  # reused
    ex = train[3]
    assert set(ex) == {"image", "caption", "label", "hard_negative"}
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
    assert isinstance(ex["caption"], str) and isinstance(ex["hard_negative"], str)
    assert ex["caption"].startswith("a ") and ex["caption"] != ex["hard_negative"]
    assert shapes.CLASS_NAMES[ex["label"]] in ex["caption"]
    batch = train.__getitems__([0, 5])
    assert [b["caption"] for b in batch] == [train[0]["caption"], train[5]["caption"]]

    half = sources.get_source("vlax_shapes", "train[:50%]", data_dir=shapes_dir, **_SHAPES_KW)
    assert len(half) == 8


def test_builtin_rejects_unknown_options_and_splits(shapes_dir):
    with pytest.raises(TypeError, match="image_sise"):
        sources.get_source("vlax_shapes", "train", data_dir=shapes_dir, image_sise=32)
    with pytest.raises(ValueError, match="no split 'validation'"):
        sources.get_source("vlax_shapes", "validation", data_dir=shapes_dir, **_SHAPES_KW)


def test_prepared_tfds_dataset_by_name(shapes_dir):
    spec = f"vlax_shapes/{_SHAPES_CONFIG}"  # read back as any other prepared tfds dataset
    src = sources.get_source(spec, "test", data_dir=shapes_dir)
    assert len(src) == 8
    assert isinstance(src[0]["caption"], str) and src[0]["image"].shape == (32, 32, 3)
    assert len(sources.get_source(f"{spec}:1.0.0", "test[2:]", data_dir=shapes_dir)) == 6
    assert sources.dataset_info(spec, data_dir=shapes_dir) == {"class_names": shapes.CLASS_NAMES}
    with pytest.raises(TypeError, match="strict"):
        sources.get_source(spec, "test", data_dir=shapes_dir, strict=True)


def test_missing_tfds_dataset_raises_before_any_download(tmp_path):
    with pytest.raises(sources.DatasetNotFoundError, match="not_a_dataset") as info:
        sources.get_source("not_a_dataset", "train", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value) and "array_record" in str(info.value)
    # A real tfds catalogue name that is not prepared locally: still no download attempt.
    with pytest.raises(sources.DatasetNotFoundError, match="mnist"):
        sources.get_source("mnist", "train", data_dir=str(tmp_path))
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)  # an unfinished preparation
    with pytest.raises(sources.DatasetNotFoundError, match="not prepared"):
        sources.get_source("mnist", "train", data_dir=str(tmp_path))
    with pytest.raises(sources.DatasetNotFoundError):
        sources.dataset_info("mnist", data_dir=str(tmp_path))


def test_dataset_prepared_as_tfrecord_only_is_rejected(shapes_dir, tmp_path):
    # Random access needs array_record; fake a tfrecord-only preparation from its metadata.
    src_dir = os.path.join(shapes_dir, "vlax_shapes", _SHAPES_CONFIG, "1.0.0")
    dst_dir = tmp_path / "tfr_only" / "1.0.0"
    dst_dir.mkdir(parents=True)
    with open(os.path.join(src_dir, "dataset_info.json")) as f:
        info = json.load(f)
    info["fileFormat"] = "tfrecord"
    info.pop("alternativeFileFormats", None)
    (dst_dir / "dataset_info.json").write_text(json.dumps(info))
    shutil.copy(os.path.join(src_dir, "features.json"), dst_dir)
    with pytest.raises(sources.DatasetNotFoundError, match="needs array_record"):
        sources.get_source("tfr_only", "train", data_dir=str(tmp_path))


def test_several_configs_need_a_name(tmp_path):
    for config in ("small", "big"):
        (tmp_path / "two_configs" / config / "1.0.0").mkdir(parents=True)
    with pytest.raises(sources.DatasetNotFoundError, match="several configs"):
        sources.get_source("two_configs", "train", data_dir=str(tmp_path))


def test_classification_dataset_gets_rgb_images_and_class_name_captions():
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(names=["cat", "dog"]),
        }
    )
    rows = [{"image": np.full((8, 8, 1), 9 * i, np.uint8), "label": i % 2} for i in range(3)]

    class ListSource(list):
        def __getitems__(self, indices):
            return [self[i] for i in indices]

    src = sources.TfdsSource(ListSource(rows), features)
    ex = src[1]
    assert ex["image"].shape == (8, 8, 3) and (ex["image"] == 9).all()
    assert ex["caption"] == "dog" and ex["label"] == 1
    assert [e["caption"] for e in src.__getitems__([0, 2])] == ["cat", "cat"]


def test_user_spec(tmp_path):
    for i in range(4):
        Image.new("RGB", (5, 5), (10 * i, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    (tmp_path / "9.png").write_bytes(b"garbage")
    (tmp_path / "9.txt").write_text("broken")
    src = sources.get_source(f"user:{tmp_path}", "train")
    assert len(src) == 4 and len(src.skipped) == 1
    ex = src[2]
    assert set(ex) == {"image", "caption"} and ex["caption"] == "caption 2"
    assert ex["image"].shape == (5, 5, 3) and (ex["image"][..., 0] == 20).all()
    held_out = sources.get_source(f"user:{tmp_path}", "train[75%:]")
    assert [held_out[i]["caption"] for i in range(len(held_out))] == ["caption 3"]
    with pytest.raises(ValueError, match="9.png"):
        sources.get_source(f"user:{tmp_path}", "train", strict=True)
    with pytest.raises(ValueError, match="single split 'train'"):
        sources.get_source(f"user:{tmp_path}", "test")
    with pytest.raises(sources.DatasetNotFoundError, match="does not exist"):
        sources.get_source(f"user:{tmp_path}/missing.csv", "train")
    assert sources.dataset_info(f"user:{tmp_path}") == {}


def test_builtin_dataset_info():
    info = sources.dataset_info("vlax_shapes")
    assert info["class_names"] == shapes.CLASS_NAMES
    assert all(t.format("red circle").endswith("red circle.") for t in info["prompt_templates"])
    assert info["has_hard_negatives"] is True
