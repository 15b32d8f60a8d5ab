"""Image preprocessing ops on numpy arrays (no TensorFlow), used by `data.pipeline`.

Images flow through the pipeline as uint8 [H, W, 3] until `normalize` turns them into
float32. Random ops take an explicit `np.random.Generator` (grain's `random_map` supplies one
per example) so augmentation is reproducible and part of the resumable iterator state.

There is deliberately no horizontal flip: captions such as "a dog left of a cat" would become
false.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

# OpenAI CLIP's per-channel RGB statistics (on [0, 1] pixel values).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def decode(image: np.ndarray | bytes | Image.Image) -> np.ndarray:
    """Returns uint8 RGB [H, W, 3] from encoded PNG/JPEG bytes, a PIL image or an array.

    Arrays may be grey [H, W] / [H, W, 1], RGB or RGBA (alpha is dropped).
    """
    if isinstance(image, bytes | bytearray | memoryview):
        image = Image.open(io.BytesIO(image))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"decode expects uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W, 1|3|4], got shape {image.shape}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def resize(image: np.ndarray, size: int | Sequence[int], method: str = "bilinear") -> np.ndarray:
    """Resizes uint8 [H, W, 3] to [h, w, 3] (`size` is an int for square or (h, w))."""
    if method not in _RESAMPLE:
        raise ValueError(f"unknown resize method {method!r}; known: {sorted(_RESAMPLE)}")
    h, w = _hw(size)
    if image.shape[:2] == (h, w):
        return image
    out = Image.fromarray(image).resize((w, h), resample=_RESAMPLE[method])
    return np.asarray(out, dtype=np.uint8)


def normalize(
    image: np.ndarray,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
) -> np.ndarray:
    """uint8 [..., 3] -> float32 (x / 255 - mean) / std. Defaults map pixels to [-1, 1]."""
    x = image.astype(np.float32) / 255.0
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return (x - mean) / std


def random_resized_crop(
    image: np.ndarray,
    size: int | Sequence[int],
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    method: str = "bilinear",
) -> np.ndarray:
    """Crops a random window (area fraction in `scale`, aspect w/h in `ratio`) and resizes it.

    The defaults are light on purpose: image-text pairs lose meaning under heavy crops (the
    caption's objects may be cut out). Falls back to the full image when no window fits.
    """
    height, width = image.shape[:2]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return resize(image[top : top + h, left : left + w], size, method)
    return resize(image, size, method)


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.1,
    contrast: float = 0.1,
) -> np.ndarray:
    """Scales brightness and contrast of uint8 [H, W, 3] by random factors in [1 - x, 1 + x].

    Hue and saturation are left alone: captions name colours.
    """
    x = image.astype(np.float32)
    if brightness > 0:
        x = x * rng.uniform(1 - brightness, 1 + brightness)
    if contrast > 0:
        mean = x.mean()
        x = (x - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
