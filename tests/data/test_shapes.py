"""The synthetic shapes renderer (captions true to the pixels) and its tfds builder."""

import collections
import hashlib
import re

import numpy as np
import pytest

from data import shapes, shapes_tfds

_PHRASE = r"a (small|large) (\w+) (\w+)"
_CAPTION_RE = re.compile(rf"^{_PHRASE}(?: (left of|right of|above|below) {_PHRASE})?$")
_PALETTE = np.array(list(shapes.COLORS.values()), np.float32)  # [C, 3]


def _parse(caption: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """Caption -> ([(size, colour, shape), ...], relation or None)."""
    m = _CAPTION_RE.match(caption)
    assert m is not None, caption
    g = m.groups()
    objects = [g[0:3]] + ([g[4:7]] if g[3] else [])
    for size, color, shape in objects:
        assert size in shapes.SIZES and color in shapes.COLORS and shape in shapes.SHAPES
    return objects, g[3]


def _color_mask(image: np.ndarray, color: str, tol: float = 50.0) -> np.ndarray:
    """[S, S] bool: pixels within `tol` of the palette colour (anti-aliased edges excluded)."""
    dist = np.linalg.norm(image.astype(np.float32) - np.array(shapes.COLORS[color]), axis=-1)
    return dist < tol


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _nearest_color(pixel: np.ndarray) -> str:
    return list(shapes.COLORS)[int(np.argmin(np.linalg.norm(_PALETTE - pixel, axis=-1)))]


def _relation_holds(relation: str, a: np.ndarray, b: np.ndarray) -> bool:
    axis, sign = shapes.RELATIONS[relation]
    return sign * (b[axis] - a[axis]) > 0


def _caption_true(caption: str, scene: list[tuple[str, str, str]], relation: str | None) -> bool:
    """Whether `caption` describes the scene given by a (verified) true caption."""
    objects, rel = _parse(caption)
    if any(obj not in scene for obj in objects):
        return False
    if rel is None:
        return True
    if relation is None or objects[0] == objects[1]:
        return False
    same_order = scene.index(objects[0]) == 0
    return rel == (relation if same_order else shapes.OPPOSITE_RELATION[relation])


@pytest.fixture(scope="module")
def examples():
    rng = np.random.default_rng(0)
    return [shapes.render_example(rng, image_size=32) for _ in range(64)]


def test_images_are_uint8_and_both_scene_kinds_occur(examples):
    for ex in examples:
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
    n_two = sum(_parse(ex["caption"])[1] is not None for ex in examples)
    assert 10 < n_two < 54  # p_two_objects = 0.5 over 64 draws


def test_captions_match_geometry_and_colours(examples):
    for ex in examples:
        objects, relation = _parse(ex["caption"])
        image = ex["image"]
        centres = []
        for _, color, _ in objects:
            mask = _color_mask(image, color)
            assert mask.sum() >= 4, (ex["caption"], color)
            centre = _centroid(mask)
            x, y = np.rint(centre).astype(int)
            assert _nearest_color(image[y, x].astype(np.float32)) == color, ex["caption"]
            centres.append(centre)
        if relation is not None:
            assert objects[0][1] != objects[1][1]  # colours identify objects
            assert _relation_holds(relation, *centres), ex["caption"]
            assert not _relation_holds(shapes.OPPOSITE_RELATION[relation], *centres)
        # No colour outside the caption's shows up beyond stray noisy pixels.
        mentioned = {color for _, color, _ in objects}
        for color in set(shapes.COLORS) - mentioned:
            assert _color_mask(image, color, tol=30.0).sum() <= 2, (ex["caption"], color)


def test_sizes_are_separated_per_shape():
    # One-object scenes: the caption names the object, its colour mask measures its area.
    rng = np.random.default_rng(1)
    areas = collections.defaultdict(list)
    for _ in range(240):
        ex = shapes.render_example(rng, image_size=32, p_two_objects=0.0)
        [(size, color, shape)], _ = _parse(ex["caption"])
        areas[shape, size].append(_color_mask(ex["image"], color).sum())
    for shape in shapes.SHAPES:
        assert len(areas[shape, "small"]) > 5 and len(areas[shape, "large"]) > 5
        assert max(areas[shape, "small"]) < min(areas[shape, "large"]), shape


def test_labels_are_the_first_mentioned_object(examples):
    for ex in examples:
        (_, color, shape), *_ = _parse(ex["caption"])[0]
        assert 0 <= ex["label"] < len(shapes.CLASS_NAMES)
        assert shapes.CLASS_NAMES[ex["label"]] == f"{color} {shape}"
    assert len(shapes.CLASS_NAMES) == len(shapes.COLORS) * len(shapes.SHAPES)
    assert all("{}" in t for t in shapes.PROMPT_TEMPLATES)


def test_hard_negatives_differ_and_are_false(examples):
    for ex in examples:
        scene, relation = _parse(ex["caption"])
        assert ex["hard_negative"] != ex["caption"]
        assert _caption_true(ex["caption"], scene, relation)
        assert not _caption_true(ex["hard_negative"], scene, relation), ex


def _digest(ex: dict) -> str:
    """sha256 of an example's pixels, captions and label."""
    text = "\0".join([ex["caption"], ex["hard_negative"], str(ex["label"])])
    return hashlib.sha256(ex["image"].tobytes() + text.encode()).hexdigest()


def test_rendering_is_a_function_of_the_seed_in_any_process(other_process):
    here = [
        _digest(shapes.render_example(np.random.default_rng(7), image_size=32)),
        _digest(shapes.render_indexed(3, 5, image_size=32)),
    ]
    there = other_process(
        "import numpy as np\n"
        "from data import shapes\n"
        "from tests.data.test_shapes import _digest\n"
        "print(_digest(shapes.render_example(np.random.default_rng(7), image_size=32)))\n"
        "print(_digest(shapes.render_indexed(3, 5, image_size=32)))\n"
    )
    assert there.split() == here
    e = shapes.render_indexed(4, 5, image_size=32)
    assert _digest(e) != here[1]  # another stream seed, another example
    with pytest.raises(ValueError, match="image_size"):
        shapes.render_example(np.random.default_rng(0), image_size=16)


def _example_key(ex: dict) -> tuple:
    text = [v.decode() if isinstance(v, bytes) else v for v in (ex["caption"], ex["hard_negative"])]
    return (ex["image"].tobytes(), *text, int(ex["label"]))


def test_tfds_build_reads_back_the_rendered_examples(tmp_path):
    builder = shapes_tfds.VlaxShapes(
        data_dir=str(tmp_path), image_size=32, train_size=24, test_size=8
    )
    assert not builder.is_prepared()
    shapes_tfds.prepare(builder)
    assert builder.is_prepared()
    assert builder.info.file_format.value == "array_record"

    train = builder.as_data_source("train")
    test = builder.as_data_source("test")
    assert (len(train), len(test)) == (24, 8)
    first = train[0]
    assert first["image"].dtype == np.uint8 and first["image"].shape == (32, 32, 3)

    # tfds shuffles the stored order, so compare as multisets.
    stored = collections.Counter(_example_key(train[i]) for i in range(len(train)))
    seed = shapes_tfds.SPLIT_SEEDS["train"]
    rendered = collections.Counter(
        _example_key(shapes.render_indexed(seed, i, image_size=32)) for i in range(24)
    )
    assert stored == rendered

    test_images = {test[i]["image"].tobytes() for i in range(len(test))}
    assert not test_images & {key[0] for key in stored}
    assert builder.info.features["label"].names == shapes.CLASS_NAMES


def test_tfds_configs_are_named_by_their_sizes(tmp_path):
    default = shapes_tfds.VlaxShapes(data_dir=str(tmp_path))
    assert default.builder_config.image_size == 64
    assert default.builder_config.train_size == 20_000
    predefined = shapes_tfds.VlaxShapes(data_dir=str(tmp_path), image_size=32)
    assert (
        predefined.builder_config
        is shapes_tfds.VlaxShapes.builder_configs[predefined.builder_config.name]
    )
    custom = shapes_tfds.VlaxShapes(data_dir=str(tmp_path), image_size=32, train_size=10)
    assert custom.data_dir != predefined.data_dir
    with pytest.raises(ValueError, match="Split sizes"):
        shapes_tfds.make_config(train_size=0)
    with pytest.raises(ValueError, match="not both"):
        shapes_tfds.VlaxShapes(data_dir=str(tmp_path), config="x", image_size=32)
