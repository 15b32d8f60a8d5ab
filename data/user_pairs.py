"""A random-access source over a user's own image-caption pairs, local or on gs://.

Three layouts are accepted (see `data.user_listing`, which also assigns the train/test split):

  * a folder of images, each with a same-stem caption file: `cat.jpg` + `cat.txt`
    (searched recursively, in sorted path order);
  * a `.csv` file with a header row containing the columns `image` and `caption`, and
    optionally `split`;
  * a `.jsonl` file with one `{"image": path, "caption": text}` object per line (optional
    "split" key).

Construction reads only the listing, so a million-image folder is ready in the time of one
walk; images are decoded when read. Problems the listing shows (no caption file, an empty
caption or image path) are found at construction; an image that is missing or cannot be
decoded is found when it is read. By default both are skipped and counted (`skipped`): a
bad image read at index i is replaced by the next readable pair in index order (wrapping),
so index i always gives the same example, and `read_with_index(i)` says which pair that is
(evaluators match references to it). With `strict=True` the first bad pair raises a
ValueError naming the file and the reason.

A read that fails transiently (`is_transient`: an I/O error, a timeout, a dropped connection,
as network filesystems and mounted buckets give now and then) is retried after each delay
of `READ_RETRY_DELAYS_S`; only a file that stays unreadable is swapped. Marking a file bad
on one such blip would change the examples for the rest of the process (a resumed run would
no longer see the data of the run it continues). A missing file, a missing permission or a
folder named like an image is not retried (it says what the path is, not how a read went),
nor is an image that fails to decode (its bytes were read, and would read the same).
"""

import copy
import io
import logging
import threading
import time

import numpy as np
from PIL import Image, ImageOps

from data import paths, user_listing

logger = logging.getLogger(__name__)
# Seconds slept before each retry of a transient read error (4 tries, 2.1 s at most).
READ_RETRY_DELAYS_S = (0.1, 0.4, 1.6)
# OSErrors that describe the file, not the read: retrying cannot change them.
_PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def decode_rgb(data: bytes) -> np.ndarray:
    """Decodes encoded image bytes to uint8 [H, W, 3] RGB (EXIF rotation applied, alpha on
    white)."""
    with Image.open(io.BytesIO(data)) as image:
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


def is_transient(error: OSError) -> bool:
    """Whether a read may succeed if tried again: any OSError but a missing file, a missing
    permission, or a path that is (or runs through) something other than a file."""
    return not isinstance(error, _PERMANENT_ERRORS)


def read_bytes(path: paths.PathLike) -> bytes:
    """The file's bytes, retrying transient errors after each delay of READ_RETRY_DELAYS_S.

    Raises:
      OSError: a permanent error at once, a transient one once every retry failed.
    """
    for delay in READ_RETRY_DELAYS_S:
        try:
            return paths.as_path(path).read_bytes()
        except OSError as e:
            if not is_transient(e):
                raise
            logger.info("Retrying %s in %.1f s after %s: %s", path, delay, type(e).__name__, e)
        time.sleep(delay)
    return paths.as_path(path).read_bytes()


def load_rgb(path: paths.PathLike) -> np.ndarray:
    """Reads an image file (local or gs://, transient errors retried) and decodes it to
    uint8 [H, W, 3] RGB."""
    return decode_rgb(read_bytes(path))


def _read_problem(image_path: str) -> tuple[np.ndarray | None, str | None]:
    """(image, None) if `image_path` reads and decodes, else (None, why not)."""
    try:
        data = read_bytes(image_path)
    except FileNotFoundError:
        return None, "missing image file"
    except OSError as e:  # permissions, a folder named like an image, retries used up, ...
        tries = f" after {len(READ_RETRY_DELAYS_S) + 1} tries" if is_transient(e) else ""
        return None, f"unreadable file{tries} ({type(e).__name__}: {e})"
    try:
        return decode_rgb(data), None
    except Exception as e:  # Pillow raises many exception types on bad files
        return None, f"unreadable image ({type(e).__name__}: {e})"


class UserPairsSource:
    """Random-access image-caption pairs: `len(src)`, `src[i] -> dict(image, caption)`.

    Safe to read from several threads (grain reads with threads).

    Attributes:
      path: the listing (folder, .csv or .jsonl).
      pairs: (image path, caption) of every pair the listing shows usable, in a fixed order;
        `len(src) == len(pairs)` even when some images turn out unreadable.
      skipped: (image path, reason) of every pair left out so far: the listing's problems,
        then the unreadable images found by reads (a snapshot; it grows as reads find more).
    """

    fields = ("image", "caption")

    def __init__(
        self,
        path: paths.PathLike,
        *,
        strict: bool = False,
        image_root: paths.PathLike | None = None,
        split: str | None = None,
        holdout: float = 0.05,
    ):
        """Reads the listing at `path` (never the images) and keeps the rows of `split`.

        Args:
          path: a folder, .csv or .jsonl, local or gs://.
          strict: raise on the first bad pair instead of skipping it.
          image_root: what relative image paths of a CSV/JSONL resolve against (default: its
            folder).
          split: "train", "test", or None for every row.
          holdout: the fraction of rows without a split column/key that go to "test".

        Raises:
          FileNotFoundError: `path` does not exist.
          ValueError: unknown layout, malformed CSV/JSONL or split value, no usable pair of
            `split`, or (strict) a listing problem.
        """
        if split not in (None, *user_listing.SPLITS):
            raise ValueError(f"split must be one of {user_listing.SPLITS} or None, got {split!r}")
        self.path = paths.as_path(path)
        self.strict = strict
        if not self.path.exists():
            raise FileNotFoundError(f"User image-caption data not found: {self.path}")
        rows = user_listing.list_pairs(self.path, image_root, holdout=holdout)
        self.pairs: list[tuple[str, str]] = []
        self._listing_skipped: list[tuple[str, str]] = []
        for row in rows:
            if row.problem is not None and strict:
                raise ValueError(f"Bad image-caption pair {row.image}: {row.problem}")
            if split is not None and row.split != split:
                continue
            if row.problem is None:
                self.pairs.append((row.image, row.caption))
            else:
                self._listing_skipped.append((row.image, row.problem))
        if self._listing_skipped:
            logger.warning(
                "Skipped %d of %d listed image-caption pairs in %s (first: %s: %s); pass "
                "strict=True to fail instead.",
                len(self._listing_skipped),
                len(self.pairs) + len(self._listing_skipped),
                self.path,
                *self._listing_skipped[0],
            )
        if not self.pairs:
            which = f" in split {split!r} (holdout={holdout})" if split is not None else ""
            raise ValueError(
                f"No usable image-caption pairs in {self.path}{which} ({len(rows)} listed, "
                f"{len(self._listing_skipped)} skipped)."
            )
        self._reset_reads()

    def _reset_reads(self) -> None:
        """Fresh read-time bookkeeping: indices known unreadable and their reasons."""
        self._lock = threading.Lock()
        self._bad: set[int] = set()
        self._read_skipped: list[tuple[str, str]] = []

    @property
    def skipped(self) -> list[tuple[str, str]]:
        with self._lock:
            return self._listing_skipped + self._read_skipped

    def select(self, start: int | None, stop: int | None) -> "UserPairsSource":
        """A source over `pairs[start:stop]` with the same options (reads counted anew)."""
        out = copy.copy(self)
        out.pairs = self.pairs[start:stop]
        out._reset_reads()
        return out

    def captions(self, limit: int | None = None) -> list[str]:
        """The first `limit` captions (all if None) in index order, from the listing alone.

        Pairs whose images later prove unreadable are included: no image is opened here.
        """
        return [caption for _, caption in self.pairs[:limit]]

    def texts(self, field: str, limit: int | None = None) -> list[str]:
        """`captions(limit)` for field "caption", the only text field of user pairs."""
        if field != "caption":
            raise ValueError(f"user pairs have the text field 'caption' only, not {field!r}")
        return self.captions(limit)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        """Returns dict(image=uint8 [H, W, 3], caption=str); sizes differ between images.

        A bad pair at `index` (strict=False) gives the next readable one, wrapping around.
        """
        return self.read_with_index(index)[1]

    def read_with_index(self, index: int) -> tuple[int, dict]:
        """(j, `self[index]`): j in [0, len) is the pair the example really is, `index`
        (made non-negative) unless that pair's image is bad and pair j stands in for it."""
        n = len(self.pairs)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} pairs")
        for offset in range(n):
            i = (index + offset) % n
            if i in self._bad:
                continue
            image_path, caption = self.pairs[i]
            image, problem = _read_problem(image_path)
            if problem is None:
                return i, {"image": image, "caption": caption}
            if self.strict:
                raise ValueError(f"Bad image-caption pair {image_path}: {problem}")
            self._record_bad(i, image_path, problem)
        raise ValueError(f"None of the {n} images of {self.path} is readable.")

    def _record_bad(self, index: int, image_path: str, problem: str) -> None:
        with self._lock:
            if index in self._bad:  # another thread found it first
                return
            self._bad.add(index)
            self._read_skipped.append((image_path, problem))
            count = len(self._read_skipped)
            first = self._read_skipped[0]
        # Rate-limited: one warning at 1, 2, 4, 8, ... bad images, not one per file.
        if count & (count - 1) == 0:
            logger.warning(
                "%d unreadable image(s) so far in %s (first: %s: %s); each is replaced by the "
                "next readable pair. Pass strict=True to fail instead.",
                count,
                self.path,
                *first,
            )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]  # locks do not pickle; read bookkeeping goes along without one
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        path, skipped = str(self.path), len(self.skipped)
        return f"UserPairsSource({path!r}, pairs={len(self)}, skipped={skipped})"
