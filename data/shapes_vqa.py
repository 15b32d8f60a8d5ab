"""Questions about the synthetic shapes scenes (data.shapes), answered by construction.

Each question is asked of a `shapes.Scene`, whose objects' colours, shapes, sizes and
positions are what the image shows, and only when its answer is determined:

  colour    "what colour is the circle?"            -> "red"     (the object named uniquely
                                                                 by shape, else size + shape)
  shape     "what shape is the red object?"          -> "circle"  (colours are unique)
  size      "what size is the red circle?"           -> "small" / "large"
  count     "how many objects are there?"            -> "one" / "two"
            "how many crosses are there?"            -> "zero" / "one" / "two"
  relation  "is the red circle left of the blue square?" -> "yes" / "no"   (two objects:
            the true relation, or its opposite, which the renderer guarantees false;
            either object may come first)
  exists    "is there a red circle?"                 -> "yes" / "no"   (a "no" differs from
                                                                 a present object in colour
                                                                 or shape)

Yes and no are equally likely within the relation and exists types. A scene gets
`questions_per_scene` questions of distinct types, drawn from those that apply to it, with a
generator of their own (`question_rng`), so the scenes - and hence the images - are exactly
vlax_shapes' scenes of the same split, seed and index.
"""

from __future__ import annotations

import numpy as np

from data import shapes

QUESTION_TYPES = ("colour", "shape", "size", "count", "relation", "exists")
COUNT_WORDS = ("zero", "one", "two")
ANSWERS: tuple[str, ...] = (
    *shapes.COLORS,
    *shapes.SHAPES,
    *shapes.SIZES,
    *COUNT_WORDS,
    "yes",
    "no",
)
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
_QUESTION_SEED = 7_000_003  # keeps question draws apart from the scene's own stream


def question_rng(split_seed: int, scene_index: int) -> np.random.Generator:
    """The generator of the questions about scene `scene_index` of a split."""
    return np.random.default_rng([_QUESTION_SEED, split_seed, scene_index])


def _unique_name(obj: shapes.SceneObject, scene: shapes.Scene) -> str | None:
    """The shortest of "shape" / "size shape" that names only `obj` in the scene."""
    others = [o for o in scene.objects if o is not obj]
    if all(o.shape != obj.shape for o in others):
        return obj.shape
    if all((o.size, o.shape) != (obj.size, obj.shape) for o in others):
        return f"{obj.size} {obj.shape}"
    return None


def _pick(items, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def _colour(scene: shapes.Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    named = [(o, n) for o in scene.objects if (n := _unique_name(o, scene)) is not None]
    if not named:
        return None
    obj, name = _pick(named, rng)
    return f"what colour is the {name}?", obj.color


def _shape(scene: shapes.Scene, rng: np.random.Generator) -> tuple[str, str]:
    obj = _pick(scene.objects, rng)
    return f"what shape is the {obj.color} object?", obj.shape


def _size(scene: shapes.Scene, rng: np.random.Generator) -> tuple[str, str]:
    obj = _pick(scene.objects, rng)
    return f"what size is the {obj.color} {obj.shape}?", obj.size


def _count(scene: shapes.Scene, rng: np.random.Generator) -> tuple[str, str]:
    if rng.random() < 0.5:
        return "how many objects are there?", COUNT_WORDS[len(scene.objects)]
    shape = _pick(shapes.SHAPES, rng)
    n = sum(o.shape == shape for o in scene.objects)
    return f"how many {_PLURAL[shape]} are there?", COUNT_WORDS[n]


def _relation(scene: shapes.Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    if scene.relation is None:
        return None
    a, b = scene.objects
    relation, answer = scene.relation, "yes"
    if rng.random() < 0.5:
        relation, answer = shapes.OPPOSITE_RELATION[relation], "no"
    if rng.random() < 0.5:  # "b R' a" with R' the opposite states the same fact
        a, b, relation = b, a, shapes.OPPOSITE_RELATION[relation]
    return f"is the {a.color} {a.shape} {relation} the {b.color} {b.shape}?", answer


def _exists(scene: shapes.Scene, rng: np.random.Generator) -> tuple[str, str]:
    present = {(o.color, o.shape) for o in scene.objects}
    obj = _pick(scene.objects, rng)
    if rng.random() < 0.5:
        return f"is there a {obj.color} {obj.shape}?", "yes"
    absent = [
        (c, s)
        for c, s in [(c, obj.shape) for c in shapes.COLORS]
        + [(obj.color, s) for s in shapes.SHAPES]
        if (c, s) not in present
    ]
    color, shape = _pick(absent, rng)
    return f"is there a {color} {shape}?", "no"


_ASK = {
    "colour": _colour,
    "shape": _shape,
    "size": _size,
    "count": _count,
    "relation": _relation,
    "exists": _exists,
}


def ask(scene: shapes.Scene, rng: np.random.Generator, k: int) -> list[tuple[str, str, str]]:
    """Up to `k` questions of distinct types about `scene`: [(question, answer, type)].

    The types are drawn without replacement from those that apply (relation needs two
    objects; colour needs an object named uniquely by shape or size + shape).
    """
    out = []
    for position in rng.permutation(len(QUESTION_TYPES)):
        if len(out) == k:
            break
        kind = QUESTION_TYPES[int(position)]
        qa = _ASK[kind](scene, rng)
        if qa is not None:
            out.append((*qa, kind))
    return out


def scene_questions(
    split_seed: int,
    scene_index: int,
    k: int,
    image_size: int = 64,
    p_two_objects: float = 0.5,
    *,
    render: bool = True,
) -> tuple[np.ndarray | None, shapes.Scene, list[tuple[str, str, str]]]:
    """Scene `scene_index` of the split seeded `split_seed` (vlax_shapes' scene there), its
    image uint8 [S, S, 3] (None with `render=False`: questions alone are cheap) and its k
    questions."""
    rng = np.random.default_rng([split_seed, scene_index])
    if render:
        image, scene = shapes.render_scene(rng, image_size, p_two_objects)
    else:
        image, scene = None, shapes.sample_scene(rng, image_size, p_two_objects)
    return image, scene, ask(scene, question_rng(split_seed, scene_index), k)
