"""`vlax_shapes_text`: a text-only caption corpus for SimVLM's text-only mix (no images).

Caption i of a split is the caption of scene i of the shapes grammar (data.shapes) drawn
with this corpus's own seeds, so its texts are not vlax_shapes' paired captions, with the
same vocabulary. Captions are computed on demand from the index (no files, no rendering:
`shapes.sample_scene` stops before drawing), so the corpus is offline, tiny and
deterministic. Examples are {"caption": str}: what task "text_only" reads.
"""

from __future__ import annotations

import copy

import numpy as np

from data import shapes

NAME = "vlax_shapes_text"
SPLIT_SEEDS = {"train": 3_000_017, "test": 4_000_037}
DEFAULT_SIZES = {"train": 20_000, "test": 2_000}


class ShapesTextSource:
    """Random-access captions: `len(src)`, `src[i] -> {"caption": str}`, thread-safe."""

    fields = ("caption",)

    def __init__(self, split: str = "train", size: int | None = None, p_two_objects: float = 0.5):
        """Args: split "train" or "test"; size: its number of captions (default
        DEFAULT_SIZES[split]); p_two_objects: the share of two-object captions."""
        if split not in SPLIT_SEEDS:
            raise ValueError(f"{NAME} has the splits {list(SPLIT_SEEDS)}, got {split!r}")
        size = DEFAULT_SIZES[split] if size is None else int(size)
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.split, self.p_two_objects = split, p_two_objects
        self._start, self._stop = 0, size

    def select(self, start: int | None, stop: int | None) -> ShapesTextSource:
        """A source over captions [start:stop] of this one (Python slice semantics)."""
        out = copy.copy(self)
        begin, end, _ = slice(start, stop).indices(len(self))
        out._start, out._stop = self._start + begin, self._start + max(begin, end)
        return out

    def __len__(self) -> int:
        return self._stop - self._start

    def _caption(self, i: int) -> str:
        rng = np.random.default_rng([SPLIT_SEEDS[self.split], self._start + i])
        # Captions do not depend on the image size; 64 only fixes the (unused) geometry.
        return shapes.sample_scene(rng, 64, self.p_two_objects).caption

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} captions")
        return {"caption": self._caption(int(index) % n)}

    def texts(self, field: str = "caption", limit: int | None = None) -> list[str]:
        """The first `limit` values (all if None) of `field` ("caption"), in index order."""
        if field != "caption":
            raise ValueError(f"{NAME} has only the field 'caption', not {field!r}")
        n = len(self) if limit is None else min(limit, len(self))
        return [self._caption(i) for i in range(n)]

    def captions(self, limit: int | None = None) -> list[str]:
        return self.texts("caption", limit)

    def __repr__(self) -> str:
        return f"ShapesTextSource({self.split!r}, n={len(self)})"
