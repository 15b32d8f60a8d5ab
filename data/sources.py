"""Resolves a data spec string to a random-access source of image-caption examples.

Specs:
  "vlax_shapes"           the built-in synthetic dataset; generated into data_dir on first use.
  "<tfds name>[/config][:version]"
                          any tfds dataset already prepared under data_dir as array_record
                          (never downloaded here: a missing one raises DatasetNotFoundError).
  "user:<path>"           the user's own pairs: a folder, a .csv or a .jsonl (data.user_pairs).

Every source has `__len__` and `__getitem__` (what grain reads) and yields dicts with
"image" (uint8 [H, W, 3]) and "caption" (str), plus "label" (int) and "hard_negative" (str)
when the dataset has them. Splits accept tfds slicing ("train[:10%]", "test[5:]"); user data
has the single split "train", so hold out a slice of it for evaluation.
"""

import fcntl
import math
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from data import shapes, shapes_tfds, user_pairs

BUILTIN = "vlax_shapes"
USER_PREFIX = "user:"
_SHAPES_KWARGS = ("image_size", "train_size", "test_size", "p_two_objects")
_USER_KWARGS = ("strict", "image_root")
_SPLIT_RE = re.compile(r"^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


class DatasetNotFoundError(ValueError):
    """The named dataset is not available locally (nothing is ever downloaded)."""


class TfdsSource:
    """Wraps a tfds array_record data source: decodes text to str and images to [H, W, 3]."""

    def __init__(self, data_source, features: tfds.features.FeaturesDict):
        self._source = data_source
        self._keys = [k for k in ("image", "caption", "label", "hard_negative") if k in features]
        label = _class_label(features)
        # COCO-style datasets hold several captions per image ("captions"/"text"): use the first.
        self._multi_captions = "caption" not in features and "captions" in features
        has_text = "caption" in features or self._multi_captions
        # A classification dataset has no captions: its class name stands in for one.
        self._label_names = label.names if not has_text and label is not None else None

    def __len__(self) -> int:
        return len(self._source)

    def _convert(self, example: dict) -> dict:
        out = {}
        for key in self._keys:
            value = example[key]
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            out[key] = value
        image = np.asarray(out["image"], dtype=np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] == 1:  # grayscale datasets: the towers expect RGB
            image = np.repeat(image, 3, axis=-1)
        out["image"] = image
        if "label" in out:
            out["label"] = int(out["label"])
        if self._label_names is not None:
            out["caption"] = self._label_names[out["label"]]
        if self._multi_captions:
            first = example["captions"]["text"][0]
            out["caption"] = first.decode("utf-8") if isinstance(first, bytes) else str(first)
        return out

    def __getitem__(self, index: int) -> dict:
        return self._convert(self._source[index])

    def __getitems__(self, indices) -> list[dict]:
        # Batched reads are much cheaper on array_record than one lookup per index.
        return [self._convert(ex) for ex in self._source.__getitems__(indices)]

    def __repr__(self) -> str:
        return f"TfdsSource({self._source!r})"


def get_source(spec: str, split: str, *, data_dir: str | None = None, **kw):
    """Returns a random-access source for `spec` and `split` (see the module docstring).

    Args:
      spec: "vlax_shapes", a tfds name, or "user:<path>".
      split: e.g. "train", "test", "train[:90%]".
      data_dir: tfds data directory; defaults to $TFDS_DATA_DIR or ~/tensorflow_datasets.
      **kw: vlax_shapes: image_size, train_size, test_size, p_two_objects;
        user data: strict, image_root; other tfds datasets: none.

    Raises:
      DatasetNotFoundError: the dataset is not available locally.
      TypeError: a keyword that the spec's kind does not take.
      ValueError: an unknown split.
    """
    if spec.startswith(USER_PREFIX):
        _check_kwargs(spec, kw, _USER_KWARGS)
        path = os.path.expanduser(spec[len(USER_PREFIX) :])
        if not os.path.exists(path):
            raise DatasetNotFoundError(
                f"User data {spec!r} not found: {os.path.abspath(path)} does not exist. Give a "
                "folder of images with same-stem .txt captions, a .csv (image,caption) or a .jsonl."
            )
        name, start, stop = _parse_split(split)
        if name != "train":
            raise ValueError(
                f"User data has the single split 'train', got {split!r}; hold out part of it "
                "with a slice such as 'train[90%:]'."
            )
        source = user_pairs.UserPairsSource(path, **kw)
        lo, hi = _slice_bounds(start, stop, len(source))
        source.pairs = source.pairs[lo:hi]
        if not source.pairs:
            raise ValueError(f"Split {split!r} of {spec!r} selects no examples.")
        return source
    if spec == BUILTIN:
        _check_kwargs(spec, kw, _SHAPES_KWARGS)
        builder = shapes_tfds.VlaxShapes(data_dir=data_dir, **kw)
        if not builder.is_prepared():
            _prepare_locked(builder)
    else:
        _check_kwargs(spec, kw, ())
        builder = _prepared_builder(spec, data_dir)
    _check_split(builder, spec, split)
    source = builder.as_data_source(split, file_format="array_record")
    return TfdsSource(source, builder.info.features)


def dataset_info(spec: str, *, data_dir: str | None = None) -> dict:
    """What evaluators need beyond the examples: class_names and prompt_templates, if any.

    Returns:
      {} for user data; {"class_names": [...]} for a tfds dataset with a ClassLabel "label";
      for vlax_shapes also "prompt_templates" and "has_hard_negatives".
    """
    if spec.startswith(USER_PREFIX):
        return {}
    if spec == BUILTIN:
        return {
            "class_names": list(shapes.CLASS_NAMES),
            "prompt_templates": list(shapes.PROMPT_TEMPLATES),
            "has_hard_negatives": True,
        }
    label = _class_label(_prepared_builder(spec, data_dir).info.features)
    return {"class_names": list(label.names)} if label is not None else {}


def _class_label(features: tfds.features.FeaturesDict) -> tfds.features.ClassLabel | None:
    """The dataset's "label" feature if it is a ClassLabel (which carries class names)."""
    if "label" not in features:
        return None
    label = features["label"]
    return label if isinstance(label, tfds.features.ClassLabel) else None


def _check_kwargs(spec: str, kw: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise TypeError(
            f"Unexpected options {unknown} for data spec {spec!r}; it takes {list(allowed)}."
        )


def _prepare_locked(builder: tfds.core.DatasetBuilder) -> None:
    """Generates the built-in dataset, once even when several processes start together."""
    root = builder.data_dir_root
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{builder.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Another process may have finished it while this one waited for the lock.
            if not builder.is_prepared():
                shapes_tfds.prepare(builder)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prepared_builder(spec: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """A read-only builder for the prepared tfds dataset `name[/config][:version]`, or raises.

    Reads only local metadata: constructing a builder by name could query GCS for its info.
    """
    root = data_dir if data_dir is not None else tfds.core.constants.get_default_data_dir()
    name, _, version = spec.partition(":")
    name, _, config = name.partition("/")
    how_to = (
        f"vlax never downloads datasets. Prepare it first as array_record, e.g. `tfds build "
        f"{name} --data_dir={root} --file_format=array_record`, or use '{BUILTIN}' or "
        "'user:<path>'."
    )
    dataset_dir = os.path.join(root, name)
    if not os.path.isdir(dataset_dir):
        raise DatasetNotFoundError(
            f"Dataset {spec!r} not found: no directory {dataset_dir} under data_dir {root!r}. "
            + how_to
        )
    if not config:
        configs = [
            c
            for c in sorted(os.listdir(dataset_dir))
            if not _is_version(c) and os.path.isdir(os.path.join(dataset_dir, c))
        ]
        if not _versions(dataset_dir) and len(configs) > 1:
            raise DatasetNotFoundError(
                f"Dataset {spec!r} in {root!r} has several configs {configs}; name one as "
                f"'{name}/<config>'."
            )
        if not _versions(dataset_dir) and configs:
            config = configs[0]
    variant_root = os.path.join(dataset_dir, config) if config else dataset_dir
    versions = [version] if version else _versions(variant_root)
    if not versions or not os.path.isfile(
        os.path.join(variant_root, versions[-1], "dataset_info.json")
    ):
        raise DatasetNotFoundError(
            f"Dataset {spec!r} is not prepared under data_dir {root!r} (looked for "
            f"{variant_root}/{version or '<version>'}/dataset_info.json). " + how_to
        )
    path = os.path.join(variant_root, versions[-1])
    builder = tfds.builder_from_directory(path)
    formats = builder.info.available_file_formats()
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
        raise DatasetNotFoundError(
            f"Dataset {spec!r} at {path} is prepared as {sorted(f.value for f in formats)}, "
            "but random access needs array_record. " + how_to
        )
    return builder


def _is_version(name: str) -> bool:
    return tfds.core.Version.is_valid(name)


def _versions(folder: str) -> list[str]:
    """Prepared version sub-folders of `folder`, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = [
        v
        for v in os.listdir(folder)
        if _is_version(v) and os.path.isfile(os.path.join(folder, v, "dataset_info.json"))
    ]
    return sorted(found, key=tfds.core.Version)


def _parse_split(split: str) -> tuple[str, str | None, str | None]:
    match = _SPLIT_RE.match(split.replace(" ", ""))
    if match is None:
        raise ValueError(f"Cannot parse split {split!r}; expected e.g. 'train' or 'train[:90%]'.")
    return match.group(1), match.group(2), match.group(3)


def _slice_bounds(start: str | None, stop: str | None, n: int) -> tuple[int, int]:
    """Python slice bounds from tfds-style "[start:stop]" strings (ints or percents of n)."""

    def resolve(bound: str | None, default: int) -> int:
        if bound is None:
            return default
        if bound.endswith("%"):
            return math.floor(int(bound[:-1]) * n / 100 + 0.5)
        return int(bound)

    return resolve(start, 0), resolve(stop, n)


def _check_split(builder: tfds.core.DatasetBuilder, spec: str, split: str) -> None:
    name, _, _ = _parse_split(split)
    available = sorted(builder.info.splits.keys())
    if name not in available:
        raise ValueError(f"Dataset {spec!r} has no split {name!r}; available: {available}.")
