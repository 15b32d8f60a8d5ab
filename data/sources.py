"""Resolves a data spec string to a random-access source of examples, through a registry.

A spec names a registered *kind* of source, exactly ("vlax_shapes", "fashion_mnist") or by
prefix ("user:<path>"); any other spec, "<tfds name>[/config][:version]", is a tfds dataset
already prepared under data_dir as array_record (never downloaded here: a missing one raises
DatasetNotFoundError). Each kind is one `SourceKind` subclass below, registered with
`@register(name)`: its docstring says what the spec reads, `options` are the keyword options
`get_source` passes on (any other raises TypeError), `open` opens a split and `info` is what
`dataset_info` says of it. A new dataset adds its own module and one such entry.

Paths (data_dir, user data) may be local or remote (gs://...): all go through etils.epath.

Every source has `__len__` and `__getitem__` (what grain reads) and yields dicts with
"image" (uint8 [H, W, 3]) and "caption" (str), plus "label" (int) and "hard_negative" (str)
when the dataset has them (COCO-style ones also "captions": list[str], every reference);
VQA sources have "question" and "answer" instead of a caption, text-only sources only
"caption". Sources offer `fields` (the example keys) where they know them without a read.
`captions(limit=None) -> list[str]` reads the first `limit` captions in index order without
decoding any image (for tokenizer training and caption statistics); `texts(field,
limit=None)` does the same for any text field (references for evaluators: the answers, or
all captions of an image as a list); `read_texts` falls back to `captions` or to full reads
for sources without `texts`. A source whose example at index i may really be its example j
(user pairs, which stand the next readable pair in for an unreadable image) also offers
`read_with_index(i) -> (j, example)`, so evaluators can match the texts of j to the row.

Splits: a name, optionally sliced tfds-style by example counts or percents of the split:
"train", "test", "train[:10%]", "train[90%:]", "test[5:]", "test[:100]". The split names of
each kind are in its entry; tfds datasets have the splits they were prepared with.
"""

import fcntl
import math
import os
import re
from collections.abc import Callable
from typing import ClassVar

import tensorflow_datasets as tfds
from etils import epath

from data import (
    easy_vqa,
    fashion_mnist,
    paths,
    shapes,
    shapes_tfds,
    shapes_vqa,
    shapes_vqa_tfds,
    text_corpus,
    tfds_source,
    user_listing,
    user_pairs,
)

BUILTIN = "vlax_shapes"
USER_PREFIX = "user:"
_SPLIT_RE = re.compile(r"^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


class DatasetNotFoundError(ValueError):
    """The named dataset is not available locally (nothing is ever downloaded)."""


class SourceKind:
    """One kind of data spec: the options it takes, how it opens a split, what it says of
    itself. Subclasses document their spec in their docstring and register with `register`."""

    options: ClassVar[tuple[str, ...]] = ()

    def open(self, spec: str, split: str, data_dir: paths.PathLike | None, **options):
        """The random-access source of `split` (see the module docstring)."""
        raise NotImplementedError

    def info(self, spec: str, data_dir: paths.PathLike | None) -> dict:
        """What `dataset_info` returns for `spec`; nothing by default."""
        return {}


_KINDS: dict[str, SourceKind] = {}
_PREFIXES: dict[str, SourceKind] = {}


def register(name: str, *, prefix: bool = False) -> Callable[[type], type]:
    """Class decorator registering a SourceKind for the spec `name` (every spec starting
    with `name` when `prefix`)."""

    def decorator(cls: type) -> type:
        table = _PREFIXES if prefix else _KINDS
        if name in table and type(table[name]) is not cls:
            raise ValueError(f"data spec {name!r} is already registered to {type(table[name])}")
        table[name] = cls()
        return cls

    return decorator


def source_kind(spec: str) -> SourceKind:
    """The registered kind of `spec`: by exact name, then by prefix, else a prepared tfds
    dataset."""
    if spec in _KINDS:
        return _KINDS[spec]
    for prefix, kind in _PREFIXES.items():
        if spec.startswith(prefix):
            return kind
    return _PREPARED_TFDS


def get_source(spec: str, split: str, *, data_dir: paths.PathLike | None = None, **kw):
    """Returns a random-access source for `spec` and `split` (see the module docstring).

    Args:
      spec: a registered name ("vlax_shapes", "fashion_mnist", ...), "user:<path>" (local or
        gs://), or a prepared tfds name.
      split: e.g. "train", "test", "train[:90%]".
      data_dir: tfds data directory (local or gs://); defaults to $TFDS_DATA_DIR or
        ~/tensorflow_datasets. Kinds that read elsewhere say what it means to them.
      **kw: the options of the spec's kind (its entry's `options`).

    Raises:
      DatasetNotFoundError: the dataset is not available locally.
      TypeError: a keyword that the spec's kind does not take.
      ValueError: an unknown split.
    """
    kind = source_kind(spec)
    unknown = sorted(set(kw) - set(kind.options))
    if unknown:
        raise TypeError(
            f"Unexpected options {unknown} for data spec {spec!r}; it takes {list(kind.options)}."
        )
    return kind.open(spec, split, data_dir, **kw)


def dataset_info(spec: str, *, data_dir: paths.PathLike | None = None) -> dict:
    """What evaluators need beyond the examples, without reading the data: "class_names" and
    "prompt_templates" (classification and zero-shot), "has_hard_negatives", "answers" (the
    answer vocabulary) and "majority_answer" (VQA), "question_types". Each kind's `info`
    says which it has; a prepared tfds dataset has "class_names" when its "label" is a
    ClassLabel.
    """
    return source_kind(spec).info(spec, data_dir)


def read_texts(source, field: str, limit: int | None = None) -> list:
    """`source.texts(field, limit)`, for any source: sources without `texts` (e.g. plain
    lists) answer "caption" from `captions`, other fields from full reads (which decode
    images: slower, same result)."""
    if hasattr(source, "texts"):
        return source.texts(field, limit)
    if field == "caption" and hasattr(source, "captions"):
        return source.captions(limit)
    n = len(source) if limit is None else min(limit, len(source))
    return [source[i][field] for i in range(n)]


# ---------------------------------------------------------------- the registered kinds


class _Generated(SourceKind):
    """A tfds builder that vlax generates itself, into data_dir on first use; its options
    are the builder's size arguments."""

    builder: ClassVar[type[tfds.core.DatasetBuilder]]

    def open(self, spec, split, data_dir, **options):
        builder = self.builder(data_dir=data_dir, **options)
        if not builder.is_prepared():
            _prepare_locked(builder)
        return _PreparedTfds.read(builder, spec, split)


@register(BUILTIN)
class _Shapes(_Generated):
    """The built-in synthetic dataset (data.shapes_tfds), generated into data_dir on first
    use; splits "train" and "test". Examples have "image", "caption", "label" and
    "hard_negative"; info has "class_names", "prompt_templates" and "has_hard_negatives"."""

    builder = shapes_tfds.VlaxShapes
    options = ("image_size", "train_size", "test_size", "p_two_objects")

    def info(self, spec, data_dir):
        return {
            "class_names": list(shapes.CLASS_NAMES),
            "prompt_templates": list(shapes.PROMPT_TEMPLATES),
            "has_hard_negatives": True,
        }


@register(shapes_vqa_tfds.NAME)
class _ShapesVqa(_Generated):
    """Questions about the built-in scenes (data.shapes_vqa_tfds): image, question, answer,
    question_type, caption, label, scene; generated into data_dir on first use like
    vlax_shapes (sizes count scenes); splits "train" and "test". info: "class_names",
    "answers", "majority_answer" (of its default build's train split), "question_types"."""

    builder = shapes_vqa_tfds.VlaxShapesVqa
    options = shapes_vqa_tfds.SIZE_KEYS

    def info(self, spec, data_dir):
        return {
            "class_names": list(shapes.CLASS_NAMES),
            "answers": list(shapes_vqa.ANSWERS),
            "majority_answer": shapes_vqa_tfds.MAJORITY_ANSWER,
            "question_types": list(shapes_vqa.QUESTION_TYPES),
        }


@register(text_corpus.NAME)
class _ShapesText(SourceKind):
    """Text only: captions of the shapes grammar, no images (data.text_corpus), computed from
    the index, for the text-only mix; splits "train" and "test" (sizes `<split>_size`)."""

    options = ("train_size", "test_size", "p_two_objects")

    def open(self, spec, split, data_dir, **options):
        name, start, stop = _split_of(spec, split, sorted(text_corpus.SPLIT_SEEDS))
        size = options.get(f"{name}_size")
        source = text_corpus.ShapesTextSource(name, size, options.get("p_two_objects", 0.5))
        return _sliced(source, spec, split, start, stop)


@register(easy_vqa.NAME)
class _EasyVqa(SourceKind):
    """The real easy-VQA data shipped by PyPI `easy-vqa==1.0` (data.easy_vqa): image,
    question, answer, image_id; splits "train" and "test". Read from the installed package
    (option `root`: a folder of the same layout); data_dir is not used. info: "answers" (the
    package's answer list) and "majority_answer"."""

    options = ("root",)

    def open(self, spec, split, data_dir, root=None):
        name, start, stop = _split_of(spec, split, list(easy_vqa.SPLITS))
        try:
            source = easy_vqa.EasyVqaSource(root, name)
        except FileNotFoundError as e:
            raise DatasetNotFoundError(
                f"Dataset {spec!r} not found: {e}. Install it with `{easy_vqa.INSTALL_HINT}` "
                "(its wheel carries the data), or pass root= a folder of the same layout."
            ) from None
        return _sliced(source, spec, split, start, stop)

    def info(self, spec, data_dir):
        # The package's own answer list, without reading questions or images.
        try:
            answers = easy_vqa.read_answers(easy_vqa.package_data_dir())
        except FileNotFoundError as e:
            raise DatasetNotFoundError(f"{e}; install it with `{easy_vqa.INSTALL_HINT}`") from None
        return {"answers": answers, "majority_answer": easy_vqa.MAJORITY_ANSWER}


@register("fashion_mnist")
class _FashionMnist(SourceKind):
    """Fashion-MNIST from Debian's dataset-fashion-mnist IDX files (data.fashion_mnist);
    data_dir is the folder of the IDX files (default /usr/share/datasets/fashion-mnist).
    Splits "train" (60,000) and "test" (10,000). Captions are the class name in one of five
    templates; "label" is the class. info: "class_names" and "prompt_templates"
    (fashion_mnist.PROMPT_TEMPLATES, none of which is a training caption template). A tfds
    build of the same name stays reachable by version, e.g. "fashion_mnist:3.0.1"."""

    def open(self, spec, split, data_dir):
        root = paths.as_path(data_dir if data_dir is not None else fashion_mnist.DEFAULT_DIR)
        name, start, stop = _split_of(spec, split, sorted(fashion_mnist.SPLITS))
        try:
            source = fashion_mnist.FashionMnistSource(root, name)
        except FileNotFoundError as e:
            raise DatasetNotFoundError(
                f"Dataset {spec!r} not found: {e}. Install Debian's IDX files with "
                f"`{fashion_mnist.INSTALL_HINT}` (they go to {fashion_mnist.DEFAULT_DIR}), or "
                "point data_dir at a folder holding them."
            ) from None
        return _sliced(source, spec, split, start, stop)

    def info(self, spec, data_dir):
        return {
            "class_names": list(fashion_mnist.CLASS_NAMES),
            "prompt_templates": list(fashion_mnist.PROMPT_TEMPLATES),
        }


@register(USER_PREFIX, prefix=True)
class _UserPairs(SourceKind):
    """The user's own pairs, "user:<path>": a folder, a .csv or a .jsonl (data.user_pairs);
    data_dir is not used. Splits "train" and "test" as data.user_listing assigns them (a
    row's `split` column or key, else "test" for a stable-hash share `holdout`, default
    0.05, of the image paths); slices apply within the split."""

    options = ("strict", "image_root", "holdout")

    def open(self, spec, split, data_dir, **options):
        path = paths.as_path(spec[len(USER_PREFIX) :])
        if not path.exists():
            raise DatasetNotFoundError(
                f"User data {spec!r} not found: {path} does not exist. Give a folder of images "
                "with same-stem .txt captions, a .csv (image,caption[,split]) or a .jsonl."
            )
        name, start, stop = _parse_split(split)
        if name not in user_listing.SPLITS:
            raise ValueError(
                f"User data has the splits {list(user_listing.SPLITS)}, got {split!r} (a "
                "listing's split column or key may also say 'val'/'validation', read as 'test')."
            )
        source = user_pairs.UserPairsSource(path, split=name, **options)
        return _sliced(source, spec, split, start, stop)


class _PreparedTfds(SourceKind):
    """Any other spec, "<tfds name>[/config][:version]": a tfds dataset already prepared
    under data_dir as array_record, with the splits it was prepared with. info:
    "class_names" when its "label" is a ClassLabel."""

    def open(self, spec, split, data_dir):
        return self.read(_prepared_builder(spec, data_dir), spec, split)

    @staticmethod
    def read(builder: tfds.core.DatasetBuilder, spec: str, split: str) -> tfds_source.TfdsSource:
        """The `split` of a prepared builder; a split it was not prepared with raises."""
        _split_of(spec, split, sorted(builder.info.splits.keys()))
        return tfds_source.TfdsSource.from_builder(builder, split)

    def info(self, spec, data_dir):
        label = tfds_source.class_label(_prepared_builder(spec, data_dir).info.features)
        return {"class_names": list(label.names)} if label is not None else {}


_PREPARED_TFDS = _PreparedTfds()


def _sliced(source, spec: str, split: str, start: str | None, stop: str | None):
    """`source.select` of the split's slice; a slice that selects nothing raises."""
    source = source.select(*_slice_bounds(start, stop, len(source)))
    if not len(source):
        raise ValueError(f"Split {split!r} of {spec!r} selects no examples.")
    return source


def _prepare_locked(builder: tfds.core.DatasetBuilder) -> None:
    """Generates the built-in dataset, once even when several processes start together."""
    root = os.fspath(builder.data_dir_root)
    if not paths.is_local(root):
        # fcntl locks only local files, and epath offers no lock on GCS. Hosts that start
        # together may each generate the (deterministic) dataset into their own incomplete
        # folder; tfds then renames it into place, and a host that loses that race fails the
        # rename and uses the winner's copy. Cheaper still: prepare it once before big jobs.
        try:
            shapes_tfds.prepare(builder)
        except Exception:
            if not builder.is_prepared():
                raise
        return
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{builder.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Another process may have finished it while this one waited for the lock.
            if not builder.is_prepared():
                shapes_tfds.prepare(builder)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prepared_builder(spec: str, data_dir: paths.PathLike | None) -> tfds.core.DatasetBuilder:
    """A read-only builder for the prepared tfds dataset `name[/config][:version]`, or raises.

    Reads only the metadata under data_dir (local or gs://): constructing a builder by name
    could query GCS for its info.
    """
    root = paths.as_path(
        data_dir if data_dir is not None else tfds.core.constants.get_default_data_dir()
    )
    name, _, version = spec.partition(":")
    name, _, config = name.partition("/")
    how_to = (
        f"vlax never downloads datasets. Prepare it first as array_record, e.g. `tfds build "
        f"{name} --data_dir={root} --file_format=array_record`, or use '{BUILTIN}' or "
        "'user:<path>'."
    )
    dataset_dir = root / name
    if not dataset_dir.is_dir():
        raise DatasetNotFoundError(
            f"Dataset {spec!r} not found: no directory {dataset_dir} under data_dir "
            f"{str(root)!r}. " + how_to
        )
    if not config:
        configs = sorted(
            c.name for c in dataset_dir.iterdir() if not _is_version(c.name) and c.is_dir()
        )
        if not _versions(dataset_dir) and len(configs) > 1:
            raise DatasetNotFoundError(
                f"Dataset {spec!r} in {str(root)!r} has several configs {configs}; name one as "
                f"'{name}/<config>'."
            )
        if not _versions(dataset_dir) and configs:
            config = configs[0]
    variant_root = dataset_dir / config if config else dataset_dir
    versions = [version] if version else _versions(variant_root)
    if not versions or not (variant_root / versions[-1] / "dataset_info.json").exists():
        raise DatasetNotFoundError(
            f"Dataset {spec!r} is not prepared under data_dir {str(root)!r} (looked for "
            f"{variant_root}/{version or '<version>'}/dataset_info.json). " + how_to
        )
    path = variant_root / versions[-1]
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


def _versions(folder: epath.Path) -> list[str]:
    """Prepared version sub-folders of `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [
        v.name
        for v in folder.iterdir()
        if _is_version(v.name) and (v / "dataset_info.json").exists()
    ]
    return sorted(found, key=tfds.core.Version)


def _parse_split(split: str) -> tuple[str, str | None, str | None]:
    match = _SPLIT_RE.match(split.replace(" ", ""))
    if match is None:
        raise ValueError(f"Cannot parse split {split!r}; expected e.g. 'train' or 'train[:90%]'.")
    return match.group(1), match.group(2), match.group(3)


def _split_of(spec: str, split: str, available: list[str]) -> tuple[str, str | None, str | None]:
    """`_parse_split` for a kind with the split names `available`; another name raises."""
    name, start, stop = _parse_split(split)
    if name not in available:
        raise ValueError(f"Dataset {spec!r} has no split {name!r}; available: {available}.")
    return name, start, stop


def _slice_bounds(start: str | None, stop: str | None, n: int) -> tuple[int, int]:
    """Python slice bounds from tfds-style "[start:stop]" strings (ints or percents of n)."""

    def resolve(bound: str | None, default: int) -> int:
        if bound is None:
            return default
        if bound.endswith("%"):
            return math.floor(int(bound[:-1]) * n / 100 + 0.5)
        return int(bound)

    return resolve(start, 0), resolve(stop, n)
