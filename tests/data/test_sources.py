"""Resolving data specs: the built-in dataset, prepared tfds datasets, user data, errors."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from data import shapes, shapes_tfds, sources, tfds_source

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
    assert train.captions(3) == [train[i]["caption"] for i in range(3)]
    assert len(train.captions()) == 16 and test.captions(100) == [
        test[i]["caption"] for i in range(8)
    ]

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

    src = tfds_source.TfdsSource(ListSource(rows), features, ListSource(rows))
    ex = src[1]
    assert ex["image"].shape == (8, 8, 3) and (ex["image"] == 9).all()
    assert ex["caption"] == "dog" and ex["label"] == 1
    assert [e["caption"] for e in src.__getitems__([0, 2])] == ["cat", "cat"]
    assert src.captions() == ["cat", "dog", "cat"]


def _user_folder(root, n: int) -> None:
    for i in range(n):
        Image.new("RGB", (5, 5), (10 * i, 0, 0)).save(root / f"{i:02d}.png")
        (root / f"{i:02d}.txt").write_text(f"caption {i}")


def test_user_spec(tmp_path):
    _user_folder(tmp_path, 40)
    (tmp_path / "99.png").write_bytes(b"garbage")
    (tmp_path / "99.txt").write_text("broken")
    train = sources.get_source(f"user:{tmp_path}", "train", holdout=0.25)
    test = sources.get_source(f"user:{tmp_path}", "test", holdout=0.25)
    assert len(train) + len(test) == 41 and len(test) > 3
    captions = set(train.captions()) | set(test.captions())
    assert not set(train.captions()) & set(test.captions()) and len(captions) == 41
    ex = next(train[i] for i in range(len(train)) if train.captions()[i] == "caption 2")
    assert set(ex) == {"image", "caption"}
    assert ex["image"].shape == (5, 5, 3) and (ex["image"][..., 0] == 20).all()
    # The default holdout is 5%; slices apply within a split.
    assert len(sources.get_source(f"user:{tmp_path}", "test")) < len(test)
    half = sources.get_source(f"user:{tmp_path}", "train[:50%]", holdout=0.25)
    assert half.captions() == train.captions()[: round(len(train) / 2)]
    first = sources.get_source(f"user:{tmp_path}", "test[:2]", holdout=0.25)
    assert first.captions() == test.captions()[:2]
    strict = sources.get_source(f"user:{tmp_path}", "train", strict=True, holdout=0.0)
    with pytest.raises(ValueError, match=r"99\.png: unreadable image"):
        strict[len(strict) - 1]
    with pytest.raises(ValueError, match="splits \\['train', 'test'\\]"):
        sources.get_source(f"user:{tmp_path}", "validation")
    with pytest.raises(ValueError, match="selects no examples"):
        sources.get_source(f"user:{tmp_path}", "test[5:5]", holdout=0.25)
    with pytest.raises(sources.DatasetNotFoundError, match="does not exist"):
        sources.get_source(f"user:{tmp_path}/missing.csv", "train")
    with pytest.raises(TypeError, match="holdot"):
        sources.get_source(f"user:{tmp_path}", "train", holdot=0.1)
    assert sources.dataset_info(f"user:{tmp_path}") == {}


def test_user_spec_on_gcs(gcs, tmp_path):
    _user_folder(tmp_path, 6)
    for f in sorted(tmp_path.iterdir()):
        (gcs / "pairs" / f.name).parent.mkdir(parents=True, exist_ok=True)
        (gcs / "pairs" / f.name).write_bytes(f.read_bytes())
    src = sources.get_source(f"user:{gcs}/pairs", "train", holdout=0.0)
    assert src.captions() == [f"caption {i}" for i in range(6)]
    assert (src[3]["image"][..., 0] == 30).all()
    with pytest.raises(sources.DatasetNotFoundError, match="does not exist"):
        sources.get_source(f"user:{gcs}/nope.csv", "train")


def test_builtin_dataset_info():
    info = sources.dataset_info("vlax_shapes")
    assert info["class_names"] == shapes.CLASS_NAMES
    assert all(t.format("red circle").endswith("red circle.") for t in info["prompt_templates"])
    assert info["has_hard_negatives"] is True


class TinyCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """COCO-style: several captions per image under "captions"/"text"."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = epath.Path(__file__)  # see VlaxShapes.code_path

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(4, 4, 3), encoding_format="png"),
                    "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(5):
            image = shapes_tfds.encode_png(np.full((4, 4, 3), i, np.uint8))
            yield i, {"image": image, "captions": {"text": [f"first {i}", f"second {i}"]}}


class TinyClasses(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Classification: no text at all, the class name stands in for a caption."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(4, 4, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=["cat", "dog", "owl"]),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(5):
            yield i, {"image": np.full((4, 4, 1), i, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tiny_tfds"))
    for cls in (TinyCaptions, TinyClasses):
        cls(data_dir=data_dir).download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
    return data_dir


@pytest.mark.parametrize(
    "name, expected",
    [
        ("tiny_captions", [f"first {i}" for i in range(5)]),
        ("tiny_classes", ["cat", "dog", "owl", "cat", "dog"]),
        ("vlax_shapes/" + _SHAPES_CONFIG, None),
    ],
)
def test_captions_never_decode_images(name, expected, tiny_dir, shapes_dir, monkeypatch):
    src = sources.get_source(name, "train", data_dir=shapes_dir if expected is None else tiny_dir)
    by_index = [ex["caption"] for ex in src.__getitems__(list(range(5)))]
    assert expected is None or sorted(by_index) == sorted(expected)  # tfds shuffles by key

    def no_decode(*args, **kwargs):
        raise AssertionError("captions() decoded an image")

    monkeypatch.setattr(tfds.features.Image, "decode_example_np", no_decode)
    monkeypatch.setattr(Image, "open", no_decode)
    monkeypatch.setattr(tfds_source, "_CAPTION_READ_BATCH", 2)  # several batched reads
    assert src.captions(5) == by_index
    assert src.captions(3) == by_index[:3] and len(src.captions()) == len(src)
    with pytest.raises(AssertionError, match="decoded"):
        src[0]  # the patch is effective: a normal read decodes the image


def test_missing_dataset_on_gcs(gcs, shapes_dir):
    data_dir = str(gcs / "tfds")
    with pytest.raises(sources.DatasetNotFoundError, match="no directory") as info:
        sources.get_source("mnist", "train", data_dir=data_dir)
    assert data_dir in str(info.value)
    (gcs / "tfds" / "mnist" / "3.0.1").mkdir(parents=True)  # an unfinished preparation
    with pytest.raises(sources.DatasetNotFoundError, match="not prepared"):
        sources.get_source("mnist", "train", data_dir=data_dir)
    for config in ("small", "big"):
        (gcs / "tfds" / "two_configs" / config / "1.0.0").mkdir(parents=True)
    with pytest.raises(sources.DatasetNotFoundError, match="several configs"):
        sources.get_source("two_configs", "train", data_dir=data_dir)
    # Prepared metadata is found and read there too.
    src_dir = epath.Path(shapes_dir) / "vlax_shapes" / _SHAPES_CONFIG / "1.0.0"
    dst_dir = gcs / "tfds" / "copied" / "1.0.0"
    dst_dir.mkdir(parents=True)
    for f in src_dir.iterdir():
        if ".array_record" not in f.name:  # the metadata: info, features, class names
            (dst_dir / f.name).write_bytes(f.read_bytes())
    info = sources.dataset_info("copied", data_dir=data_dir)
    assert info == {"class_names": shapes.CLASS_NAMES}


def test_builtin_generation_on_gcs_skips_the_local_lock(gcs, monkeypatch):
    class FakeBuilder:
        name = "vlax_shapes"
        data_dir_root = str(gcs / "tfds")
        prepared = False

        def is_prepared(self):
            return self.prepared

    def prepare(builder):
        builder.prepared = True

    monkeypatch.setattr(shapes_tfds, "prepare", prepare)
    monkeypatch.setattr(sources.fcntl, "flock", lambda *a: pytest.fail("locked a gs:// path"))
    builder = FakeBuilder()
    sources._prepare_locked(builder)
    assert builder.prepared
    assert not os.path.exists("gs:")  # nothing written to the local disk by mistake

    def lose_the_race(builder):
        builder.prepared = True  # another host's copy landed first
        raise FileExistsError("rename target exists")

    monkeypatch.setattr(shapes_tfds, "prepare", lose_the_race)
    sources._prepare_locked(FakeBuilder())  # uses the winner's copy

    def fail(builder):
        raise OSError("bucket not writable")

    monkeypatch.setattr(shapes_tfds, "prepare", fail)
    with pytest.raises(OSError, match="not writable"):
        sources._prepare_locked(FakeBuilder())


def test_texts_read_any_text_field_without_images(tiny_dir, shapes_dir, monkeypatch):
    coco = sources.get_source("tiny_captions", "train", data_dir=tiny_dir)
    assert coco.fields == ["caption", "captions", "image"]
    firsts = coco.captions()
    assert coco[0]["captions"] == [coco[0]["caption"], "second" + coco[0]["caption"][5:]]
    shapes_src = sources.get_source(f"vlax_shapes/{_SHAPES_CONFIG}", "test", data_dir=shapes_dir)
    assert shapes_src.fields == ["caption", "hard_negative", "image", "label"]
    negatives = [shapes_src[i]["hard_negative"] for i in range(3)]

    monkeypatch.setattr(tfds.features.Image, "decode_example_np", lambda *a: pytest.fail("decoded"))
    refs = coco.texts("captions")  # all references of each image, in source order
    assert refs == [[f, "second" + f[len("first") :]] for f in firsts]
    assert coco.texts("caption", 2) == firsts[:2]
    assert shapes_src.texts("hard_negative", 3) == negatives
    with pytest.raises(ValueError, match=r"no text field 'label'.*\['captions'\]"):
        coco.texts("label")


def test_read_texts_falls_back_for_plain_sources():
    rows = [
        {"image": np.zeros((2, 2, 3), np.uint8), "caption": f"c{i}", "q": f"q{i}"} for i in range(4)
    ]
    assert sources.read_texts(rows, "q", 2) == ["q0", "q1"]
    assert sources.read_texts(rows, "caption") == ["c0", "c1", "c2", "c3"]


def test_a_registered_kind_serves_its_spec_and_options(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "_KINDS", dict(sources._KINDS))  # registered for this test only

    @sources.register("tiny_lists")
    class TinyLists(sources.SourceKind):
        """Captions "<split> <i>" for i < n."""

        options = ("n",)

        def open(self, spec, split, data_dir, n=3):
            return [{"caption": f"{split} {i}"} for i in range(n)]

        def info(self, spec, data_dir):
            return {"class_names": ["tiny"]}

    assert sources.get_source("tiny_lists", "test", n=2) == [
        {"caption": "test 0"},
        {"caption": "test 1"},
    ]
    assert sources.dataset_info("tiny_lists") == {"class_names": ["tiny"]}
    with pytest.raises(TypeError, match=r"Unexpected options \['m'\].*it takes \['n'\]"):
        sources.get_source("tiny_lists", "test", m=2)
    with pytest.raises(ValueError, match="'fashion_mnist' is already registered"):
        sources.register("fashion_mnist")(TinyLists)
    # Only the exact name is the kind: a versioned one is a prepared tfds dataset.
    with pytest.raises(sources.DatasetNotFoundError, match="tiny_lists"):
        sources.get_source("tiny_lists:1.0.0", "test", data_dir=str(tmp_path))
