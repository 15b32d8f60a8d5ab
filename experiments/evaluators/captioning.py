"""Captioning: generate a caption per held-out image, score CIDEr-D and BLEU-4 against references.

The objective's `generate` method is called on fixed-size chunks of the valid rows:
    generate(images float32 [b, S, S, 3], prompt_tokens int32 [b, P], prompt_lengths int32 [b],
             *, max_new_tokens: int, decode: str) -> {"tokens": int32 [b, N], "scores": [b]}
with `tokens` the continuation (EOS-terminated, then padding). The data's task supplies the
prompt (an empty one for plain captioning), so the evaluator passes "prompt"/"prompt_len"
through untouched. Generated ids become text with the data's `decode_tokens`; a row's
references (a list of captions per image, or one caption) are the data's `texts(field, ...)`
entry at its "text_index", the pair whose image the row holds (see experiments.evaluators).

The chance level is the best constant caption: each of the 5 most frequent reference captions is
scored as the prediction for every image, and the best CIDEr-D (and BLEU-4) is reported as
"chance_cider" ("chance_bleu4"). Candidates come from the rows' references, so it is an
optimistic (oracle-picked) constant; it is computed once per set of rows' text indices, which
fix the references.

Config (`config.evals.<name>`):
  type="captioning", data (dataset spec for make_data), split, batch_size (rows per generate
  call), every_steps (default 0: only at the end), max_examples (default all), max_new_tokens
  (default: the data info's "max_new_tokens", else its "max_len"), decode (default "greedy";
  "beam:K", "sample:..."), contact_sheet (default 16 images; 0 = none), task (the data task
  for make_data, default "prefix_lm"), references (text field; default "captions" if the data
  has it, else "caption").

Artifacts: after `run`, `write_artifacts(out_dir, name=..., step=...)` writes a PNG contact sheet
of the first `contact_sheet` images with their generated and reference captions (the runner
calls it on process 0 only).
"""

import functools
import io
import math
import textwrap
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont

from experiments import evaluators
from experiments.evaluators import text_metrics

DECODE_MODES = ("greedy", "beam", "sample")
CHANCE_CANDIDATES = 5
_REQUIRED = ("data", "split", "batch_size")
_OPTIONAL = {
    "every_steps": 0,
    "max_examples": None,
    "max_new_tokens": None,
    "decode": "greedy",
    "contact_sheet": 16,
    "task": "prefix_lm",
    "references": None,
}


# ---------------------------------------------------------------- shared with vqa.py


class GenerativeData:
    """What a generative evaluator reads from `make_data`: batches, texts, decoding settings."""

    def __init__(self, cfg: dict, info: Any, *, where: str, reference_fields: Sequence[str]):
        self.batch_size = int(cfg["batch_size"])
        self.max_examples = cfg["max_examples"]
        self.decode = check_decode(cfg["decode"], where)
        self.texts = evaluators.info_field(info, "texts")
        self.decode_tokens = evaluators.info_field(info, "decode_tokens")
        for name, value in (("texts", self.texts), ("decode_tokens", self.decode_tokens)):
            if value is None:
                raise ValueError(f"{where}: the dataset info has no {name}")
        self.max_new_tokens = _max_new_tokens(cfg["max_new_tokens"], info, where)
        fields = evaluators.info_field(info, "fields")
        self.field = cfg["references"] or next(
            (f for f in reference_fields if fields is None or f in fields), reference_fields[-1]
        )
        evaluators.require_fields(info, (self.field,), where)
        self._where = where

    def references(self, text_index: np.ndarray) -> list[list[str]]:
        """[n][refs] reference strings of rows whose texts are source examples text_index [n]."""
        read = functools.partial(self.texts, self.field)
        return reference_lists(evaluators.texts_at(read, text_index, self._where), self._where)


def check_decode(decode: Any, where: str) -> str:
    """Rejects decode strings whose mode is not greedy / beam:K / sample:... before training."""
    mode = decode.split(":", 1)[0] if isinstance(decode, str) else None
    if mode not in DECODE_MODES:
        raise ValueError(f"{where}: decode must be one of {DECODE_MODES}[:...], got {decode!r}")
    return decode


def _max_new_tokens(value: Any, info: Any, where: str) -> int:
    for key in ("max_new_tokens", "max_len"):
        if value is None:
            value = evaluators.info_field(info, key)
    if value is None:
        raise ValueError(f"{where}: set max_new_tokens (the dataset info gives no max_len)")
    if int(value) < 1:
        raise ValueError(f"{where}: max_new_tokens must be >= 1, got {value}")
    return int(value)


def reference_lists(items: Sequence[Any], where: str) -> list[list[str]]:
    """texts(...) items (one string or a list of strings per example) -> [n][refs] strings."""

    def as_list(item: Any) -> list[str]:
        item = [item] if isinstance(item, str | bytes) else list(item)
        return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in item]

    out = [as_list(item) for item in items]
    empty = [i for i, refs in enumerate(out) if not refs]
    if empty:
        raise ValueError(f"{where}: examples {empty[:5]} have no references")
    return out


class Generated(NamedTuple):
    """What `generate_texts` returns for the n valid rows."""

    texts: list[str]  # [n] generated texts, in row order
    text_index: np.ndarray  # int64 [n]: the source example whose references each row takes
    images: dict[int, np.ndarray]  # {row: image [S, S, 3]}, see `generate_texts`


def generate_texts(
    data: GenerativeData,
    batches_fn: Callable,
    generate: Callable[..., Any],
    *,
    keep_images: int = 0,
) -> Generated:
    """Generates for every valid row in source order; keeps the first `keep_images` images
    this host decoded (under multi-host evaluation only process 0's rows, which the contact
    sheet uses)."""
    texts, text_index, kept = [], [], {}
    for chunk, n in evaluators.valid_chunks(
        batches_fn,
        ("image", "prompt", "prompt_len"),
        batch_size=data.batch_size,
        max_examples=data.max_examples,
        host_keys=("text_index",),
    ):
        out = generate(
            chunk["image"],
            chunk["prompt"],
            chunk["prompt_len"],
            max_new_tokens=data.max_new_tokens,
            decode=data.decode,
        )
        tokens = np.asarray(out["tokens"])
        if tokens.ndim != 2 or tokens.shape[0] != data.batch_size:
            raise ValueError(f"generate returned tokens {tokens.shape} for {data.batch_size} rows")
        for row in np.flatnonzero(chunk["owned"][:n]):
            if len(kept) < keep_images:
                kept[len(texts) + int(row)] = chunk["image"][row]
        texts.extend(data.decode_tokens(tokens[:n]))
        text_index.append(chunk["text_index"][:n])
    return Generated(texts, np.concatenate(text_index or [np.zeros(0, np.int64)]), kept)


# ---------------------------------------------------------------- contact sheet


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max stretch of one normalised image [S, S, 3] to uint8 (the normalisation varies)."""
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) / (hi - lo) if hi > lo else np.full_like(image, 0.5)
    return (255 * scaled).round().astype(np.uint8)


def contact_sheet(
    images: np.ndarray,
    generated: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tile: int = 160,
    cols: int = 4,
    text_lines: int = 6,
) -> Image.Image:
    """A grid of images [n, S, S, 3] with the generated (first) and reference caption under each.

    Tiles are `tile` wide and `tile + 12 * text_lines` high, in min(cols, n) columns; unused
    grid cells stay white.
    """
    n = len(images)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    line_h, text_h = 12, 12 * text_lines
    sheet = Image.new("RGB", (cols * tile, rows * (tile + text_h)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    width_chars = max(8, tile // 6)
    for i in range(n):
        x, y = (i % cols) * tile, (i // cols) * (tile + text_h)
        img = Image.fromarray(_to_uint8(np.asarray(images[i], np.float32)))
        resample = Image.Resampling.NEAREST if img.width < tile else Image.Resampling.BILINEAR
        sheet.paste(img.resize((tile, tile), resample), (x, y))
        gen = textwrap.wrap("gen: " + generated[i], width_chars)[: text_lines // 2]
        ref = textwrap.wrap("ref: " + references[i][0], width_chars)[: text_lines - len(gen)]
        lines = [(t, "black") for t in gen] + [(t, "dimgray") for t in ref]
        for j, (line, fill) in enumerate(lines):
            draw.text((x + 2, y + tile + j * line_h), line, fill=fill, font=font)
    return sheet


def write_png(image: Image.Image, path: epath.PathLike) -> str:
    """Saves a PIL image as PNG through etils.epath (local or gs://); returns the path."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return str(path)


# ---------------------------------------------------------------- evaluator


def best_constant(references: list[list[str]], k: int = CHANCE_CANDIDATES) -> dict[str, float]:
    """Best CIDEr-D / BLEU-4 of predicting one of the k most frequent references for every row."""
    counts = Counter(text_metrics.caption_tokens(r) for refs in references for r in refs)
    candidates = [c for c, _ in counts.most_common(k)]
    n = len(references)
    return {
        "chance_cider": max(text_metrics.cider_d([c] * n, references) for c in candidates),
        "chance_bleu4": max(text_metrics.bleu4([c] * n, references) for c in candidates),
    }


@evaluators.register("captioning")
class CaptioningEvaluator:
    """CIDEr-D and BLEU-4 of generated captions.

    `run` returns {"cider", "bleu4", "chance_cider", "chance_bleu4", "num_examples"}.
    """

    def __init__(self, config: Any, *, make_data: evaluators.MakeData):
        cfg = evaluators.check_config(
            config, type_name="captioning", required=_REQUIRED, optional=_OPTIONAL
        )
        where = f"captioning ({cfg['data']}:{cfg['split']})"
        self.every_steps = cfg["every_steps"]
        self.methods = ("generate",)
        self.num_sheet = int(cfg["contact_sheet"] or 0)
        if self.num_sheet < 0:
            raise ValueError(f"{where}: contact_sheet must be >= 0, got {self.num_sheet}")
        self._batches_fn, info = make_data(cfg["data"], cfg["split"], task=cfg["task"])
        self.data = GenerativeData(cfg, info, where=where, reference_fields=("captions", "caption"))
        self._where = where
        self._chance: dict[bytes, dict[str, float]] = {}  # by the rows' text_index bytes
        self.last_samples: list[dict[str, Any]] = []

    def run(self, predict: evaluators.PredictFns) -> dict:
        """Generates a caption per valid image; returns flat float metrics."""
        out = generate_texts(
            self.data, self._batches_fn, predict["generate"], keep_images=self.num_sheet
        )
        num = len(out.texts)
        if not num:
            raise ValueError(f"{self._where}: the eval split has no valid (mask=True) examples")
        refs = self.data.references(out.text_index)
        key = out.text_index.tobytes()
        if key not in self._chance:
            self._chance[key] = best_constant(refs)
        self.last_samples = [
            {"image": image, "generated": out.texts[i], "references": refs[i]}
            for i, image in out.images.items()
        ]
        return {
            "cider": text_metrics.cider_d(out.texts, refs),
            "bleu4": text_metrics.bleu4(out.texts, refs),
            **self._chance[key],
            "num_examples": float(num),
        }

    def write_artifacts(self, out_dir: epath.PathLike, *, name: str, step: int) -> list[str]:
        """Writes `<out_dir>/<name>_<step>.png` from the last `run`; returns the paths written."""
        if not self.last_samples:
            return []
        sheet = contact_sheet(
            np.stack([s["image"] for s in self.last_samples]),
            [s["generated"] for s in self.last_samples],
            [s["references"] for s in self.last_samples],
        )
        return [write_png(sheet, epath.Path(out_dir) / f"{name}_{step:08d}.png")]
