"""Lists a user's image-caption pairs (folder, CSV or JSONL) and assigns them to splits.

Only the listing is read here (one walk of a folder, or one CSV/JSONL file, plus the
folder's small .txt caption files); images are opened later, by `data.user_pairs`.

Splits: a row goes to the split its optional `split` column (CSV) / key (JSONL) names
("train", or "test"; "val" and "validation" also mean "test"). A row without one goes to
"test" with probability `holdout`, decided by a stable hash of its image path relative to the
listing's root (`assign_split`): adding rows never moves existing ones between splits, and
the assignment survives moving the data (e.g. to gs://) as long as the layout is kept.
"""

import concurrent.futures
import csv
import hashlib
import io
import json
import posixpath
from typing import NamedTuple

from etils import epath

from data import paths

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CSV_COLUMNS = ("image", "caption")
SPLITS = ("train", "test")
_SPLIT_NAMES = {"train": "train", "test": "test", "val": "test", "validation": "test"}
# Caption files are read concurrently: on GCS each read is a round trip.
_CAPTION_READ_THREADS = 32


class Row(NamedTuple):
    """One listed pair. `problem` is why it is unusable (found from the listing), or None."""

    image: str  # full path or URI of the image
    caption: str
    split: str  # "train" or "test"
    problem: str | None


def assign_split(key: str, holdout: float) -> str:
    """ "test" for a fraction `holdout` of keys, else "train"; a pure function of `key`."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < holdout else "train"


def list_pairs(
    path: epath.Path, image_root: paths.PathLike | None = None, *, holdout: float = 0.05
) -> list[Row]:
    """The rows of the listing at `path` (a folder, .csv or .jsonl), in listing order.

    A folder's rows are in sorted relative-path order. Relative image paths of a CSV/JSONL
    resolve against `image_root` if given, else the file's folder (the listing's root).
    `holdout` is the fraction of rows without a split column/key that go to "test".

    Raises:
      ValueError: an unknown layout, a malformed CSV/JSONL, or an unknown split value.
    """
    if not 0.0 <= holdout <= 1.0:
        raise ValueError(f"holdout must be in [0, 1], got {holdout}")
    if path.is_dir():
        return _list_folder(path, holdout)
    root = paths.as_path(image_root) if image_root is not None else path.parent
    if path.name.endswith(".csv"):
        return _list_csv(path, root, holdout)
    if path.name.endswith(".jsonl"):
        return _list_jsonl(path, root, holdout)
    raise ValueError(
        f"Unsupported user data file {path}: expected a folder of images with same-stem .txt "
        "captions, a .csv with columns image,caption (optional split), or a .jsonl."
    )


def _list_folder(folder: epath.Path, holdout: float) -> list[Row]:
    entries = []  # (relative image path, relative caption path or None)
    top = str(folder)
    for dirpath, _, filenames in folder.walk():
        rel_dir = str(dirpath)[len(top) :].strip("/")
        names = set(filenames)  # caption files found from the same listing: no stat per image
        for name in filenames:
            stem, ext = posixpath.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                caption = stem + ".txt"
                entries.append(
                    (
                        posixpath.join(rel_dir, name),
                        posixpath.join(rel_dir, caption) if caption in names else None,
                    )
                )
    entries.sort()

    def read_caption(rel: str | None) -> str | None:
        return None if rel is None else (folder / rel).read_text().strip()

    with concurrent.futures.ThreadPoolExecutor(_CAPTION_READ_THREADS) as pool:
        captions = list(pool.map(read_caption, [c for _, c in entries]))
    rows = []
    for (rel, _), caption in zip(entries, captions, strict=True):
        if caption is None:
            problem = f"no caption file {posixpath.splitext(posixpath.basename(rel))[0]}.txt"
        else:
            problem = None if caption else "empty caption"
        rows.append(Row(str(folder / rel), caption or "", assign_split(rel, holdout), problem))
    return rows


def _list_csv(path: epath.Path, root: epath.Path, holdout: float) -> list[Row]:
    # utf-8-sig: spreadsheet programs often start CSVs with a byte-order mark.
    text = path.read_bytes().decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    if not set(CSV_COLUMNS) <= set(columns):
        raise ValueError(
            f"{path}: the CSV header must contain the columns {','.join(CSV_COLUMNS)}; "
            f"found {columns or 'no header'}."
        )
    reader.fieldnames = columns
    return [
        _row(r["image"], r["caption"], r.get("split"), root, holdout, f"{path}:{reader.line_num}")
        for r in reader
    ]


def _list_jsonl(path: epath.Path, root: epath.Path, holdout: float) -> list[Row]:
    rows = []
    # Split on "\n" only: str.splitlines would also split at U+2028 inside JSON strings.
    for line_no, line in enumerate(path.read_text().split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            image, caption = record["image"], record["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}:{line_no}: expected a JSON object with keys 'image' and 'caption' "
                f"({type(e).__name__}: {e})."
            ) from e
        split = record.get("split")
        rows.append(_row(image, caption, split, root, holdout, f"{path}:{line_no}"))
    return rows


def _row(
    image: object, caption: object, split: object, root: epath.Path, holdout: float, where: str
) -> Row:
    """One CSV/JSONL record as a Row; `where` ("file:line") names it in errors."""
    image = str(image if image is not None else "").strip()
    caption = str(caption if caption is not None else "").strip()
    full = image if not paths.is_local(image) else str(root / image)
    problem = "empty image path" if not image else None if caption else "empty caption"
    split = _split_name(split, where) or assign_split(_relative_key(image, root), holdout)
    return Row(full, caption, split, problem)


def _relative_key(image: str, root: epath.Path) -> str:
    """`image` relative to `root` (as written if it lies elsewhere), normalised."""
    prefix = str(root).rstrip("/") + "/"
    if image.startswith(prefix):
        image = image[len(prefix) :]
    return posixpath.normpath(image) if image else ""


def _split_name(value: object, where: str) -> str | None:
    """The split a split cell names, None if it is empty or absent."""
    text = str(value if value is not None else "").strip().lower()
    if not text:
        return None
    if text not in _SPLIT_NAMES:
        raise ValueError(
            f"{where}: unknown split {value!r}; use one of {sorted(_SPLIT_NAMES)} or leave it "
            "empty (then the row is assigned by a hash of its image path)."
        )
    return _SPLIT_NAMES[text]
