"""A random-access source over a user's own image-caption pairs.

Three layouts are accepted:

  * a folder of images, each with a same-stem caption file: `cat.jpg` + `cat.txt`
    (searched recursively, in sorted path order);
  * a `.csv` file with a header row containing the columns `image` and `caption`;
  * a `.jsonl` file with one `{"image": path, "caption": text}` object per line.

Relative image paths resolve against `image_root` if given, else the CSV/JSONL file's folder.
Every image is opened and fully decoded once at construction, so a broken file fails here
rather than hours into training: by default it is skipped and counted (`skipped`), with
`strict=True` the first one raises a ValueError naming the file and the reason.
"""

import csv
import json
import logging
import os

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CSV_COLUMNS = ("image", "caption")

logger = logging.getLogger(__name__)


def load_rgb(path: str) -> np.ndarray:
    """Decodes an image file to uint8 [H, W, 3] RGB (EXIF rotation applied, alpha on white)."""
    with Image.open(path) as image:
        image.load()  # full decode: `verify()` alone misses truncated pixel data
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
        raise ValueError(f"decoded to an unusable array of shape {array.shape}")
    return array


class UserPairsSource:
    """Random-access image-caption pairs: `len(src)`, `src[i] -> dict(image, caption)`.

    Attributes:
      pairs: the (image path, caption) pairs that passed validation, in a fixed order.
      skipped: (image path, reason) of every pair left out (unreadable, missing, no caption).
    """

    def __init__(self, path: str, *, strict: bool = False, image_root: str | None = None):
        """Reads the listing at `path` and validates every image.

        Raises:
          FileNotFoundError: `path` does not exist.
          ValueError: unknown layout, malformed CSV/JSONL, no usable pair, or (strict) a bad pair.
        """
        self.path = os.path.abspath(path)
        self.strict = strict
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"User image-caption data not found: {self.path}")
        if os.path.isdir(self.path):
            candidates = self._list_folder(self.path)
        else:
            root = image_root if image_root is not None else os.path.dirname(self.path)
            if self.path.endswith(".csv"):
                candidates = self._list_csv(self.path, root)
            elif self.path.endswith(".jsonl"):
                candidates = self._list_jsonl(self.path, root)
            else:
                raise ValueError(
                    f"Unsupported user data file {self.path}: expected a folder of images with "
                    "same-stem .txt captions, a .csv with columns image,caption, or a .jsonl."
                )
        self.pairs: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []
        for image_path, caption, problem in candidates:
            if problem is None and not os.path.isfile(image_path):
                problem = "missing image file"
            if problem is None:
                try:
                    load_rgb(image_path)
                except Exception as e:  # Pillow raises many exception types on bad files
                    problem = f"unreadable image ({type(e).__name__}: {e})"
            if problem is None:
                self.pairs.append((image_path, caption))
            elif strict:
                raise ValueError(f"Bad image-caption pair {image_path}: {problem}")
            else:
                self.skipped.append((image_path, problem))
        if self.skipped:
            logger.warning(
                "Skipped %d of %d image-caption pairs in %s (first: %s: %s); pass strict=True "
                "to fail instead.",
                len(self.skipped),
                len(candidates),
                self.path,
                *self.skipped[0],
            )
        if not self.pairs:
            raise ValueError(
                f"No usable image-caption pairs in {self.path} "
                f"({len(candidates)} listed, {len(self.skipped)} skipped)."
            )

    @staticmethod
    def _list_folder(folder: str) -> list[tuple[str, str, str | None]]:
        out = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames):
                stem, ext = os.path.splitext(name)
                if ext.lower() not in IMAGE_EXTENSIONS:
                    continue
                image_path = os.path.join(dirpath, name)
                caption_path = os.path.join(dirpath, stem + ".txt")
                if not os.path.isfile(caption_path):
                    out.append((image_path, "", f"no caption file {stem}.txt"))
                    continue
                with open(caption_path, encoding="utf-8") as f:
                    caption = f.read().strip()
                out.append((image_path, caption, None if caption else "empty caption"))
        return out

    @staticmethod
    def _list_csv(path: str, root: str) -> list[tuple[str, str, str | None]]:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            if not set(CSV_COLUMNS) <= set(columns):
                raise ValueError(
                    f"{path}: the CSV header must contain the columns {','.join(CSV_COLUMNS)}; "
                    f"found {columns or 'no header'}."
                )
            reader.fieldnames = columns
            rows = [(r["image"], r["caption"]) for r in reader]
        return [_candidate(image, caption, root) for image, caption in rows]

    @staticmethod
    def _list_jsonl(path: str, root: str) -> list[tuple[str, str, str | None]]:
        out = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    image, caption = record["image"], record["caption"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(
                        f"{path}:{line_no}: expected a JSON object with keys 'image' and "
                        f"'caption' ({type(e).__name__}: {e})."
                    ) from e
                out.append(_candidate(image, caption, root))
        return out

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        """Returns dict(image=uint8 [H, W, 3], caption=str); sizes differ between images."""
        image_path, caption = self.pairs[index]
        return {"image": load_rgb(image_path), "caption": caption}

    def __repr__(self) -> str:
        return f"UserPairsSource({self.path!r}, pairs={len(self)}, skipped={len(self.skipped)})"


def _candidate(image: object, caption: object, root: str) -> tuple[str, str, str | None]:
    """(absolute image path, caption, problem or None) for one CSV/JSONL record."""
    image_path = os.path.join(root, str(image or "").strip())
    caption = str(caption if caption is not None else "").strip()
    if not str(image or "").strip():
        return image_path, caption, "empty image path"
    if not caption:
        return image_path, caption, "empty caption"
    return image_path, caption, None
