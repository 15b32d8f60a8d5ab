"""A prepared tfds dataset (array_record) as a random-access source of plain examples.

`TfdsSource` decodes text features to str, images to uint8 [H, W, 3] (grayscale to RGB),
integer scalars to int and sequences of texts to lists of str; other nested features
(boxes, ...) are left out. A classification dataset without captions gets its class name as
"caption". `captions` / `texts` read text fields in batches without decoding any image.
"""

import numpy as np
import tensorflow_datasets as tfds

_CAPTION_READ_BATCH = 1024


class TfdsSource:
    """Wraps a tfds array_record data source: decodes text to str and images to [H, W, 3].

    `text_source` reads the same examples with image features left encoded (never decoded):
    what `captions` reads.
    """

    def __init__(self, data_source, features: tfds.features.FeaturesDict, text_source):
        self._source, self._text_source = data_source, text_source
        self._features = features
        # The image, every text field (caption, hard_negative, question, answer, ...) and every
        # integer scalar (label, scene, ...); other nested features (boxes, ...) are left out.
        self._keys = [
            k
            for k, f in features.items()
            if k == "image" or isinstance(f, tfds.features.Text) or _is_int_scalar(f)
        ]
        self._ints = [k for k in self._keys if k != "image" and _is_int_scalar(features[k])]
        # Several texts per example (COCO's "captions"): a list of str (all references).
        self._text_lists = [k for k, f in features.items() if k not in self._keys and _is_text(f)]
        label = class_label(features)
        # COCO-style datasets hold several captions per image ("captions"/"text"): use the first.
        self._multi_captions = "caption" not in features and "captions" in features
        has_text = "caption" in features or self._multi_captions
        # A classification dataset has no captions: its class name stands in for one.
        self._label_names = label.names if not has_text and label is not None else None
        self._has_caption = has_text or self._label_names is not None

    @classmethod
    def from_builder(cls, builder: tfds.core.DatasetBuilder, split: str) -> "TfdsSource":
        """The source of a prepared builder's `split` (array_record)."""
        features = builder.info.features
        skip_images = {
            key: tfds.decode.SkipDecoding()
            for key, feature in features.items()
            if isinstance(feature, tfds.features.Image | tfds.features.Video)
        }
        return cls(
            builder.as_data_source(split, file_format="array_record"),
            features,
            builder.as_data_source(split, decoders=skip_images, file_format="array_record"),
        )

    def __len__(self) -> int:
        return len(self._source)

    def _caption(self, example: dict) -> str:
        if self._label_names is not None:
            return self._label_names[int(example["label"])]
        text = example["captions"]["text"][0] if self._multi_captions else example["caption"]
        return text.decode("utf-8") if isinstance(text, bytes) else str(text)

    def _convert(self, example: dict) -> dict:
        out = {}
        for key in self._keys:
            value = example[key]
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            out[key] = value
        image = np.asarray(out["image"], dtype=np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] == 1:  # grayscale datasets: the towers expect RGB
            image = np.repeat(image, 3, axis=-1)
        out["image"] = image
        for key in self._ints:
            out[key] = int(out[key])
        for key in self._text_lists:
            out[key] = _as_text(example[key])
        if self._has_caption:
            out["caption"] = self._caption(example)
        return out

    @property
    def fields(self) -> list[str]:
        """The fields of every example (what tasks check before anything is read)."""
        caption = {"caption"} if self._has_caption else set()
        return sorted(set(self._keys) | set(self._text_lists) | caption)

    def __getitem__(self, index: int) -> dict:
        return self._convert(self._source[index])

    def __getitems__(self, indices) -> list[dict]:
        # Batched reads are much cheaper on array_record than one lookup per index.
        return [self._convert(ex) for ex in self._source.__getitems__(indices)]

    def captions(self, limit: int | None = None) -> list[str]:
        """The first `limit` captions (all if None) in index order; no image is decoded."""
        return self._read_texts(self._caption, limit)

    def texts(self, field: str, limit: int | None = None) -> list:
        """The first `limit` values of the text `field` (all if None) in index order, without
        decoding any image: a str per example, or a list of str for a field with several
        texts per example (e.g. "captions" of COCO-style datasets: all references).
        "caption" is what examples carry (the first caption, or the class name).
        """
        if field == "caption":
            return self.captions(limit)
        if field not in self._features or not _is_text(self._features[field]):
            text_fields = sorted(k for k, f in self._features.items() if _is_text(f))
            raise ValueError(f"no text field {field!r} in this dataset; it has {text_fields}")
        return self._read_texts(lambda ex: _as_text(ex[field]), limit)

    def _read_texts(self, read, limit: int | None) -> list:
        n = len(self) if limit is None else min(limit, len(self))
        out = []
        for start in range(0, n, _CAPTION_READ_BATCH):
            indices = list(range(start, min(start + _CAPTION_READ_BATCH, n)))
            out.extend(read(ex) for ex in self._text_source.__getitems__(indices))
        return out

    def __repr__(self) -> str:
        return f"TfdsSource({self._source!r})"


def _is_int_scalar(feature) -> bool:
    if isinstance(feature, tfds.features.ClassLabel):
        return True
    shape, dtype = getattr(feature, "shape", None), getattr(feature, "np_dtype", None)
    return shape == () and dtype is not None and np.issubdtype(dtype, np.integer)


def _is_text(feature) -> bool:
    """A Text feature, or a sequence of them (possibly as the single field of a dict)."""
    if isinstance(feature, tfds.features.Text):
        return True
    if isinstance(feature, tfds.features.Sequence):
        return _is_text(feature.feature)
    if isinstance(feature, tfds.features.FeaturesDict) and len(feature.keys()) == 1:
        return _is_text(next(iter(feature.values())))
    return False


def _as_text(value):
    """A stored text value -> str, or list of str for sequences."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        return _as_text(next(iter(value.values())))
    return [_as_text(v) for v in value]


def class_label(features: tfds.features.FeaturesDict) -> tfds.features.ClassLabel | None:
    """The dataset's "label" feature if it is a ClassLabel (which carries class names)."""
    if "label" not in features:
        return None
    label = features["label"]
    return label if isinstance(label, tfds.features.ClassLabel) else None
