"""`vlax_shapes_vqa`: questions about the built-in shapes scenes, as a tfds builder (array_record).

Scene s of a split is vlax_shapes' example s of that split (same seeds, `shapes_tfds.
SPLIT_SEEDS`), so its image and caption are the same; example `s * q + j` is its j-th
question (q = questions_per_scene; data.shapes_vqa says which questions and why their
answers are true). Fields:

    image uint8 [S, S, 3], question str, answer str, question_type str, caption str,
    label int (the class of the caption's first object), scene int (s)

Majority-answer baseline of the default build (64 px, 10,000 / 1,000 scenes, 3 questions
each, computed by tests/data/test_shapes_vqa.py): the test split's most frequent answer is
"no", 418 of 3,000 questions = 13.9%; the train split's ("yes", 4,056 of 30,000) scores
413 / 3,000 = 13.8% on test. Blind language priors do better: answering each question text
by its most frequent train answer scores 1,257 / 3,000 = 41.9% on test (by question type:
1,164 = 38.8%); a model must beat these to show it reads the image.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data import shapes, shapes_tfds, shapes_vqa

NAME = "vlax_shapes_vqa"
SIZE_KEYS = ("image_size", "train_size", "test_size", "p_two_objects", "questions_per_scene")
MAJORITY_ANSWER = "yes"  # of the default train split
TEST_MAJORITY = ("no", 418, 3000)  # the default test split's majority answer, count, total


@dataclasses.dataclass(kw_only=True)
class VlaxShapesVqaConfig(tfds.core.BuilderConfig):
    """Image size, scene counts, scene mix and questions per scene of one build."""

    image_size: int = 64
    train_size: int = 10_000  # scenes
    test_size: int = 1_000
    p_two_objects: float = 0.5
    questions_per_scene: int = 3


def make_config(
    image_size: int = 64,
    train_size: int = 10_000,
    test_size: int = 1_000,
    p_two_objects: float = 0.5,
    questions_per_scene: int = 3,
) -> VlaxShapesVqaConfig:
    """The predefined config with these values if there is one, else a custom config."""
    if min(train_size, test_size) < 1:
        raise ValueError(f"Scene counts must be >= 1, got train={train_size}, test={test_size}.")
    if not 0.0 <= p_two_objects <= 1.0:
        raise ValueError(f"p_two_objects must be in [0, 1], got {p_two_objects}.")
    if not 1 <= questions_per_scene <= 5:
        # Five question types apply to every scene (relation needs two objects).
        raise ValueError(f"questions_per_scene must be in [1, 5], got {questions_per_scene}.")
    name = (
        f"s{image_size}_n{train_size}-{test_size}_p{round(100 * p_two_objects)}"
        f"_q{questions_per_scene}"
    )
    for cfg in VlaxShapesVqa.BUILDER_CONFIGS:
        if cfg.name == name:  # tfds refuses a custom config named like a predefined one
            return cfg
    return VlaxShapesVqaConfig(
        name=name,
        description="Custom sizes.",
        image_size=image_size,
        train_size=train_size,
        test_size=test_size,
        p_two_objects=p_two_objects,
        questions_per_scene=questions_per_scene,
    )


class VlaxShapesVqa(tfds.core.GeneratorBasedBuilder):
    """Questions with answers true by construction about coloured-shape scenes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        VlaxShapesVqaConfig(
            name="s64_n10000-1000_p50_q3",
            description="64x64 images, 10000 train / 1000 test scenes, 3 questions each.",
        )
    ]
    DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

    def __init__(self, *, config=None, **kwargs):
        """Like any tfds builder; size keywords (those of `make_config`) select or create a
        config, named by its values, so builds of different sizes never share a folder."""
        sizes = {k: kwargs.pop(k) for k in list(kwargs) if k in SIZE_KEYS}
        if sizes:
            if config is not None:
                raise ValueError("Pass either `config` or size keywords, not both.")
            config = make_config(**sizes)
        super().__init__(config=config, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)  # see shapes_tfds.VlaxShapes.code_path

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Questions about coloured shapes (see data/shapes_vqa.py).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "question": tfds.features.Text(),
                    "answer": tfds.features.Text(),
                    "question_type": tfds.features.Text(),
                    "caption": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=shapes.CLASS_NAMES),
                    "scene": tfds.features.Scalar(dtype=np.int32),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # synthetic: nothing to download
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.train_size),
            "test": self._generate_examples("test", cfg.test_size),
        }

    def _generate_examples(self, split: str, num_scenes: int):
        cfg = self.builder_config
        seed, k = shapes_tfds.SPLIT_SEEDS[split], cfg.questions_per_scene
        for s in range(num_scenes):
            image, scene, questions = shapes_vqa.scene_questions(
                seed, s, k, cfg.image_size, cfg.p_two_objects
            )
            png = shapes_tfds.encode_png(image)
            for j, (question, answer, kind) in enumerate(questions):
                yield (
                    s * k + j,
                    {
                        "image": png,
                        "question": question,
                        "answer": answer,
                        "question_type": kind,
                        "caption": scene.caption,
                        "label": scene.label,
                        "scene": s,
                    },
                )
