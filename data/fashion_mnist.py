"""Fashion-MNIST as a random-access source of captioned, labelled images.

The IDX files come from Debian's `dataset-fashion-mnist` package (nothing is downloaded):

    apt-get update && apt-get install -y dataset-fashion-mnist

which puts `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` in
/usr/share/datasets/fashion-mnist/. Plain (uncompressed) IDX files with the same names
minus ".gz" are read as well, local or remote (gs://, through etils.epath).

Examples: {"image": uint8 [28, 28, 3] (the grey channel repeated), "caption": str,
"label": int in [0, 10)}. A caption is the class name in one of `CAPTION_TEMPLATES`,
chosen by a hash of the example's index in its split (`template_index`), so captions are
deterministic and each class is described five ways. Zero-shot evaluation uses `PROMPT_TEMPLATES`, a
different set: none of them is a training caption, so a zero-shot score measures prompts
the image tower never saw paired with an image.
"""

from __future__ import annotations

import copy
import gzip

import numpy as np
from etils import epath

from data import paths

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"
SPLITS = {"train": "train", "test": "t10k"}  # split name -> IDX file prefix
IMAGE_SIZE = 28
# Lowercased, readable forms of the official names ("T-shirt/top", ..., "Ankle boot").
CLASS_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a small grey picture of a {}.",
    "a product photo of a {}.",
)
PROMPT_TEMPLATES = (
    "a {}.",
    "an image of a {}.",
    "a photo of the {}, a type of clothing.",
    "a blurry photo of a {}.",
)

_IDX_UBYTE = 0x08
_MASK32 = 0xFFFFFFFF


def template_index(index: int) -> int:
    """Which of `CAPTION_TEMPLATES` the example at `index` of its split uses: a hash of the
    index (MurmurHash3's 32-bit finaliser), so the choice follows no period of the file's
    order (with `index % 5`, labels stored in a repeating order would pair each class with
    one template)."""
    h = index & _MASK32
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & _MASK32
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & _MASK32
    return (h ^ (h >> 16)) % len(CAPTION_TEMPLATES)


def caption(label: int, index: int) -> str:
    """The training caption of the example at `index` of its split with class `label`."""
    return CAPTION_TEMPLATES[template_index(index)].format(CLASS_NAMES[label])


def idx_path(data_dir: paths.PathLike, split: str, kind: str) -> epath.Path:
    """The IDX file of `kind` ("images" or "labels") of `split`: the .gz if present, else
    the plain file. Raises FileNotFoundError (naming both) when neither exists."""
    if split not in SPLITS:
        raise ValueError(f"Fashion-MNIST has the splits {list(SPLITS)}, got {split!r}")
    rank = {"images": 3, "labels": 1}[kind]
    plain = paths.as_path(data_dir) / f"{SPLITS[split]}-{kind}-idx{rank}-ubyte"
    for path in (plain.parent / (plain.name + ".gz"), plain):
        if path.exists():
            return path
    raise FileNotFoundError(f"No Fashion-MNIST file {plain}(.gz) in {data_dir}")


def read_idx(path: paths.PathLike) -> np.ndarray:
    """Reads an unsigned-byte IDX file (gzip'd if it ends in .gz) to a uint8 array.

    Raises ValueError for a file that is not a well-formed ubyte IDX file.
    """
    path = paths.as_path(path)
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    rank = data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({size} bytes) but {len(data) - header} follow"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


class FashionMnistSource:
    """Random-access Fashion-MNIST examples: `len(src)`, `src[i] -> dict(image, caption,
    label)`. Both IDX files of the split are read into memory at construction (47 MB for
    "train"); reads are numpy views, safe from several threads.

    Attributes:
      images: uint8 [N, 28, 28] of the selected examples.
      labels: uint8 [N].
      offset: the index in the full split of example 0 (captions follow the full-split
        index, so a slice keeps each example's caption).
    """

    def __init__(self, data_dir: paths.PathLike = DEFAULT_DIR, split: str = "train"):
        """Reads `split` ("train": 60k, "test": 10k) from the IDX files in `data_dir`.

        Raises:
          FileNotFoundError: an IDX file of the split is missing.
          ValueError: an unknown split, malformed files, or images and labels that disagree.
        """
        self.data_dir, self.split = paths.as_path(data_dir), split
        images = read_idx(idx_path(data_dir, split, "images"))
        labels = read_idx(idx_path(data_dir, split, "labels"))
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"{self.data_dir}: {split} images have shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{self.data_dir}: {len(images)} {split} images but labels of shape {labels.shape}"
            )
        if labels.size and labels.max() >= len(CLASS_NAMES):
            raise ValueError(f"{self.data_dir}: {split} label {labels.max()} is not a class")
        self.images, self.labels, self.offset = images, labels, 0

    def select(self, start: int | None, stop: int | None) -> FashionMnistSource:
        """A source over examples [start:stop] of this one (Python slice semantics)."""
        out = copy.copy(self)
        begin, _, _ = slice(start, stop).indices(len(self))
        out.images, out.labels = self.images[start:stop], self.labels[start:stop]
        out.offset = self.offset + begin
        return out

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} examples")
        index = int(index) % n
        label = int(self.labels[index])
        return {
            "image": np.repeat(self.images[index][..., None], 3, axis=-1),
            "caption": caption(label, self.offset + index),
            "label": label,
        }

    def captions(self, limit: int | None = None) -> list[str]:
        """The first `limit` captions (all if None) in index order; no image is read."""
        labels = self.labels[:limit]
        return [caption(int(c), self.offset + i) for i, c in enumerate(labels)]

    def __repr__(self) -> str:
        return f"FashionMnistSource({str(self.data_dir)!r}, {self.split!r}, n={len(self)})"
