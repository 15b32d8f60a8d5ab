"""The built-in synthetic dataset `vlax_shapes` as a tfds builder, stored as array_record.

Prepare and read (no network, no TensorFlow needed: images are PNG-encoded with Pillow and
decoded by tfds with Pillow/OpenCV):

    builder = VlaxShapes(data_dir=..., image_size=32, train_size=64, test_size=16)
    prepare(builder)
    source = builder.as_data_source("train")   # random access, what grain reads
    source[0]  # {"image": uint8 [S, S, 3], "caption": bytes, "hard_negative": bytes, "label": int}

Example `i` of a split is `shapes.render_indexed(SPLIT_SEEDS[split], i, ...)`, so any example
can be regenerated without the files (tfds shuffles the stored order by key).
"""

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from data import shapes

# Different seeds per split so that test examples are not copies of train ones.
SPLIT_SEEDS = {"train": 1_000_003, "test": 2_000_003}


@dataclasses.dataclass(kw_only=True)
class VlaxShapesConfig(tfds.core.BuilderConfig):
    """Image size, split sizes and scene mix of one `vlax_shapes` build."""

    image_size: int = 64
    train_size: int = 20_000
    test_size: int = 2_000
    p_two_objects: float = 0.5


def _config_name(image_size: int, train_size: int, test_size: int, p_two_objects: float) -> str:
    return f"s{image_size}_n{train_size}-{test_size}_p{round(100 * p_two_objects)}"


def _named_config(image_size: int) -> VlaxShapesConfig:
    return VlaxShapesConfig(
        name=_config_name(image_size, 20_000, 2_000, 0.5),
        description=f"{image_size}x{image_size} images, 20000 train / 2000 test examples.",
        image_size=image_size,
    )


class VlaxShapes(tfds.core.GeneratorBasedBuilder):
    """Coloured shapes with compositional captions, class labels and hard-negative captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [_named_config(64), _named_config(32)]
    DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

    def __init__(
        self,
        *,
        image_size: int | None = None,
        train_size: int | None = None,
        test_size: int | None = None,
        p_two_objects: float | None = None,
        **kwargs,
    ):
        """Like any tfds builder; the keyword sizes, when given, select or create a config.

        Builds with different sizes get different config names, hence different directories,
        so they never overwrite each other inside one data_dir.
        """
        overrides = dict(
            image_size=image_size,
            train_size=train_size,
            test_size=test_size,
            p_two_objects=p_two_objects,
        )
        if any(v is not None for v in overrides.values()):
            if kwargs.get("config") is not None:
                raise ValueError("Pass either `config` or size keywords to VlaxShapes, not both.")
            kwargs["config"] = make_config(**{k: v for k, v in overrides.items() if v is not None})
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9.10 resolves the code path of a builder that lives in a package through
        # `importlib_resources`, which it does not declare as a dependency
        # (tensorflow/datasets#11212); the file path is all tfds needs.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Coloured shapes with compositional captions (see data/shapes.py).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "caption": tfds.features.Text(),
                    "hard_negative": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=shapes.CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # synthetic: nothing to download
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.train_size),
            "test": self._generate_examples("test", cfg.test_size),
        }

    def _generate_examples(self, split: str, num_examples: int):
        cfg = self.builder_config
        for index in range(num_examples):
            ex = shapes.render_indexed(SPLIT_SEEDS[split], index, cfg.image_size, cfg.p_two_objects)
            ex["image"] = encode_png(ex["image"])
            yield index, ex


def make_config(
    image_size: int = 64,
    train_size: int = 20_000,
    test_size: int = 2_000,
    p_two_objects: float = 0.5,
) -> VlaxShapesConfig:
    """The predefined config with these values if there is one, else a custom config."""
    if min(train_size, test_size) < 1:
        raise ValueError(f"Split sizes must be >= 1, got train={train_size}, test={test_size}.")
    if not 0.0 <= p_two_objects <= 1.0:
        raise ValueError(f"p_two_objects must be in [0, 1], got {p_two_objects}.")
    name = _config_name(image_size, train_size, test_size, p_two_objects)
    for cfg in VlaxShapes.BUILDER_CONFIGS:
        # tfds refuses a custom config that shares a predefined config's name.
        if cfg.name == name:
            return cfg
    return VlaxShapesConfig(
        name=name,
        description="Custom sizes.",
        image_size=image_size,
        train_size=train_size,
        test_size=test_size,
        p_two_objects=p_two_objects,
    )


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (Pillow, so preparing the dataset never imports TF)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def prepare(builder: tfds.core.DatasetBuilder) -> None:
    """Generates the dataset as array_record if it is not there yet (no network access)."""
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
