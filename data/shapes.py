"""Synthetic coloured-shape scenes with compositional captions (pure numpy + Pillow).

Every example is one or two non-overlapping shapes on a light grey background, captioned
from a small grammar:

    one object:  "a large red circle"
    two objects: "a small red circle left of a large blue square"

The relation in a two-object caption is always true in the rendered geometry: the objects'
bounding boxes are separated along the relation's axis, so the opposite relation is false.
Each example also carries a class label (the "colour shape" of the first-mentioned object,
an index into `CLASS_NAMES`) for zero-shot evaluation, and a hard-negative caption that
differs from the true one by swapping or replacing attributes and is false for the image.

`sample_scene` gives a scene's content (objects, positions, captions) without drawing it:
what `data.shapes_vqa` asks questions about and `data.text_corpus` takes captions from.
This module knows nothing of tfds; `data.shapes_tfds` wraps it as a dataset builder.
"""

import dataclasses
import itertools

import numpy as np
from PIL import Image, ImageDraw

# Colour names avoid leading vowels so "a {colour} {shape}" stays grammatical in templates.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 160, 60),
    "blue": (40, 75, 225),
    "yellow": (240, 205, 25),
    "purple": (135, 55, 180),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: tuple[str, ...] = ("small", "large")
# Relation -> (axis, sign): "a R b" holds when sign * (b - a) > 0 along axis (0 = x, 1 = y;
# image y grows downwards, so "above" means a smaller y).
RELATIONS: dict[str, tuple[int, int]] = {
    "left of": (0, 1),
    "right of": (0, -1),
    "above": (1, 1),
    "below": (1, -1),
}
OPPOSITE_RELATION = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}

CLASS_NAMES: list[str] = [f"{c} {s}" for c, s in itertools.product(COLORS, SHAPES)]
PROMPT_TEMPLATES: list[str] = [
    "a {}.",
    "a small {}.",
    "a large {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "an image of a {}.",
]

# Half-extent ranges as fractions of the image side; 2 * (large_max + large_max) + gap < 1 so
# two large objects always fit side by side.
_HALF_EXTENT = {"small": (0.10, 0.13), "large": (0.18, 0.22)}
_GAP = 0.03
_SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges at 32-64 px
_MIN_IMAGE_SIZE = 24


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One drawn shape: its attributes and where it is (pixels of the S x S image)."""

    color: str
    shape: str
    size: str
    cx: float  # centre, pixels
    cy: float
    half: float  # half-extent, pixels

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"


def class_index(color: str, shape: str) -> int:
    """Label of a "colour shape" class: its position in `CLASS_NAMES`."""
    return CLASS_NAMES.index(f"{color} {shape}")


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, scale: int) -> None:
    cx, cy, h = obj.cx * scale, obj.cy * scale, obj.half * scale
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif obj.shape == "square":
        s = 0.85 * h  # a square looks larger than a circle of the same extent
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    elif obj.shape == "cross":
        t = h / 3
        draw.rectangle([cx - h, cy - t, cx + h, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - h, cx + t, cy + h], fill=fill)
    else:
        raise ValueError(f"Unknown shape {obj.shape!r}; expected one of {SHAPES}.")


def _render(objects: list[SceneObject], rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Draws objects on a light background. Returns uint8 [S, S, 3]."""
    grey = int(rng.integers(190, 241))
    big = image_size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), (grey, grey, grey))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        _draw_shape(draw, obj, _SUPERSAMPLE)
    image = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32)
    if rng.random() < 0.5:  # half the images get light sensor-like noise
        image = image + rng.normal(0.0, 6.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _check_size(image_size: int) -> None:
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {_MIN_IMAGE_SIZE}, got {image_size}.")


def _half_extent(size: str, rng: np.random.Generator, image_size: int) -> float:
    lo, hi = _HALF_EXTENT[size]
    return float(rng.uniform(lo, hi)) * image_size


def _place_free(half: float, rng: np.random.Generator, image_size: int) -> float:
    """A centre coordinate keeping the object (plus a 1 px margin) inside the image."""
    return float(rng.uniform(half + 1.0, image_size - half - 1.0))


def _place_pair(
    h_a: float, h_b: float, relation: str, rng: np.random.Generator, image_size: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centres of objects a, b such that "a <relation> b" holds with separated bounding boxes."""
    axis, sign = RELATIONS[relation]
    # Along the relation axis: "first" is the object with the smaller coordinate.
    h_first, h_second = (h_a, h_b) if sign > 0 else (h_b, h_a)
    lo, hi = h_first + 1.0, image_size - h_second - 1.0
    d_min = h_first + h_second + _GAP * image_size
    d = float(rng.uniform(d_min, hi - lo))  # centre distance, >= d_min keeps boxes apart
    first = float(rng.uniform(lo, hi - d))
    a_on_axis, b_on_axis = (first, first + d) if sign > 0 else (first + d, first)
    a_off, b_off = _place_free(h_a, rng, image_size), _place_free(h_b, rng, image_size)
    if axis == 0:
        return (a_on_axis, a_off), (b_on_axis, b_off)
    return (a_off, a_on_axis), (b_off, b_on_axis)


def _other(options, exclude, rng: np.random.Generator) -> str:
    choices = [o for o in options if o not in exclude]
    return choices[int(rng.integers(len(choices)))]


def _hard_negative_single(obj: SceneObject, rng: np.random.Generator) -> str:
    field = ("color", "shape", "size")[int(rng.integers(3))]
    if field == "color":
        obj = dataclasses.replace(obj, color=_other(COLORS, {obj.color}, rng))
    elif field == "shape":
        obj = dataclasses.replace(obj, shape=_other(SHAPES, {obj.shape}, rng))
    else:
        obj = dataclasses.replace(obj, size=_other(SIZES, {obj.size}, rng))
    return obj.phrase


def _hard_negative_pair(
    a: SceneObject, b: SceneObject, relation: str, rng: np.random.Generator
) -> str:
    """A false caption for a two-object scene (the two objects always differ in colour)."""
    strategies = ["swap_colors", "flip_relation", "recolor"]
    if a.shape != b.shape:
        strategies.append("swap_shapes")
    if a.size != b.size:
        strategies.append("swap_sizes")
    strategy = strategies[int(rng.integers(len(strategies)))]
    if strategy == "swap_colors":
        a, b = dataclasses.replace(a, color=b.color), dataclasses.replace(b, color=a.color)
    elif strategy == "swap_shapes":
        a, b = dataclasses.replace(a, shape=b.shape), dataclasses.replace(b, shape=a.shape)
    elif strategy == "swap_sizes":
        a, b = dataclasses.replace(a, size=b.size), dataclasses.replace(b, size=a.size)
    elif strategy == "flip_relation":
        relation = OPPOSITE_RELATION[relation]
    else:  # give one object a colour that is absent from the scene
        new_color = _other(COLORS, {a.color, b.color}, rng)
        if rng.random() < 0.5:
            a = dataclasses.replace(a, color=new_color)
        else:
            b = dataclasses.replace(b, color=new_color)
    return f"{a.phrase} {relation} {b.phrase}"


def _random_object_attrs(rng: np.random.Generator, exclude_color: str | None = None):
    color = _other(COLORS, {exclude_color}, rng)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    return color, shape, size


@dataclasses.dataclass(frozen=True)
class Scene:
    """What an image shows, decided before any pixel is drawn (all that questions need).

    Attributes:
      objects: one or two objects; two objects always differ in colour.
      relation: for two objects, "a <relation> b" holds for (objects[0], objects[1]) with
        bounding boxes separated along the relation's axis; None for one object.
      caption, hard_negative, label: as in `render_example`.
    """

    objects: tuple[SceneObject, ...]
    relation: str | None
    caption: str
    hard_negative: str
    label: int


def sample_scene(
    rng: np.random.Generator, image_size: int = 64, p_two_objects: float = 0.5
) -> Scene:
    """Draws a random scene (objects, placement, captions) without rendering it.

    `render_example` is `sample_scene` followed by drawing with the same generator, so a
    scene and its image come from one stream of draws.
    """
    _check_size(image_size)
    color, shape, size = _random_object_attrs(rng)
    h_a = _half_extent(size, rng, image_size)
    if rng.random() < p_two_objects:
        # Distinct colours keep each object identifiable by colour alone, so attribute
        # swaps and flipped relations are guaranteed to be false.
        color_b, shape_b, size_b = _random_object_attrs(rng, exclude_color=color)
        h_b = _half_extent(size_b, rng, image_size)
        relation = list(RELATIONS)[int(rng.integers(len(RELATIONS)))]
        (ax, ay), (bx, by) = _place_pair(h_a, h_b, relation, rng, image_size)
        a = SceneObject(color, shape, size, ax, ay, h_a)
        b = SceneObject(color_b, shape_b, size_b, bx, by, h_b)
        return Scene(
            objects=(a, b),
            relation=relation,
            caption=f"{a.phrase} {relation} {b.phrase}",
            hard_negative=_hard_negative_pair(a, b, relation, rng),
            label=class_index(color, shape),
        )
    cx, cy = _place_free(h_a, rng, image_size), _place_free(h_a, rng, image_size)
    a = SceneObject(color, shape, size, cx, cy, h_a)
    return Scene(
        objects=(a,),
        relation=None,
        caption=a.phrase,
        hard_negative=_hard_negative_single(a, rng),
        label=class_index(color, shape),
    )


def render_example(
    rng: np.random.Generator, image_size: int = 64, p_two_objects: float = 0.5
) -> dict:
    """Renders one random scene.

    Args:
      rng: source of all randomness; the same generator state gives the same example.
      image_size: side S of the square image in pixels (>= 24).
      p_two_objects: probability of a two-object scene with a spatial relation.

    Returns:
      dict(image=uint8 [S, S, 3], caption=str, label=int in [0, len(CLASS_NAMES)),
      hard_negative=str) where label is the class of the first-mentioned object.
    """
    image, scene = render_scene(rng, image_size, p_two_objects)
    return dict(
        image=image,
        caption=scene.caption,
        label=scene.label,
        hard_negative=scene.hard_negative,
    )


def render_scene(
    rng: np.random.Generator, image_size: int = 64, p_two_objects: float = 0.5
) -> tuple[np.ndarray, Scene]:
    """A random scene and its image, uint8 [S, S, 3] (what `render_example` returns)."""
    scene = sample_scene(rng, image_size, p_two_objects)
    return _render(list(scene.objects), rng, image_size), scene


def render_indexed(seed: int, index: int, image_size: int = 64, p_two_objects: float = 0.5) -> dict:
    """Example `index` of the stream seeded by `seed`; independent of every other index."""
    rng = np.random.default_rng([seed, index])
    return render_example(rng, image_size=image_size, p_two_objects=p_two_objects)
