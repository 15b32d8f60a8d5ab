"""Data tasks: how a source example's fields become a model's input layout, chosen by name.

    config.data.task = "caption"        # default: what contrastive training reads
    config.data.task_args = {}          # options of the task, e.g. {"split": 0}

A task reads the fields it names in `fields` and returns, per example (L = max_len; every
"tokens" is int32 [L] right-padded with tokenizer.pad_id):

  caption    {"tokens"}: the caption exactly as contrastive text towers read it
             (`tokenizer.encode`: EOS-terminated, with the tokenizer's own framing).
  prefix_lm  SimVLM's prefix LM on image-text: {"tokens": the caption's pieces + EOS (no
             BOS), "prefix_len": int32 [] number of prefix tokens, "has_image": bool []}.
             The loss is on positions >= prefix_len that are not padding, so the target
             always holds at least one text piece and the EOS. Option `split`: "random"
             (default; prefix_len uniform in [0, n) for a text of n pieces), an int k
             (prefix_len = min(k, n - 1); 0 is VirTex-style captioning) or a float f in
             [0, 1) (prefix_len = min(floor(f * n), n - 1)).
  vqa        {"tokens": question pieces, answer pieces, EOS; "prefix_len": the number of
             question pieces (loss on the answer and EOS only); "has_image"}. No separator:
             the question's own "?" marks the boundary in the text, prefix_len marks it for
             the loss, and a separator would need a piece the tokenizers do not have. An
             over-long pair loses question pieces from its end first (the answer is the
             target).
  text_only  text without images (SimVLM's text-only mix): prefix_lm's layout and options
             with "has_image" False; the pipeline gives it a zero image of the configured
             size, so one jitted step serves batches that mix it with image-text examples.

The pipeline adds "image" (decoded uint8, later resized and normalised) for tasks with
`has_image`, and "index". Randomness (prefix_lm's random split) comes only from the
generator the pipeline passes in, which grain's `random_map` seeds from the example's
position in the stream, so the stream stays resumable and host-count independent.

Eval mode (`Task.prompt`) gives what generation starts from: "prompt" int32 [L] holds the
prompt pieces only (no EOS, padded), "prompt_len" int32 [] their number, plus "has_image".
For prefix_lm and text_only the prompt is the prefix at `eval_split` (same forms as `split`
except "random"; default 0: an empty prompt, captioning from the image alone); for vqa the
question (at most L - 2 pieces, leaving room to generate). caption's eval layout is its
train layout. References (the captions, the answers) come from the source's `texts(field)`.

Empty texts: a generative task raises on an empty caption / question / answer (its target
would be a lone EOS) rather than skipping it: skipping would change how many examples each
process reads and break the host-count-independent stream. caption keeps today's behaviour
(an empty caption encodes to a lone EOS) so contrastive runs are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

import numpy as np

Example = dict[str, Any]
_TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: makes a task available to `get_task` under `cls.name`."""
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered to {_TASKS[cls.name]}")
    _TASKS[cls.name] = cls
    return cls


def names() -> list[str]:
    """The registered task names."""
    return sorted(_TASKS)


def task_class(name: str) -> type[Task]:
    """The registered task class `name` (its `fields`/`text_fields` need no tokenizer)."""
    if name not in _TASKS:
        raise ValueError(f"Unknown data task {name!r}; registered tasks: {names()}.")
    return _TASKS[name]


def get_task(
    name: str, tokenizer, max_len: int, task_args: Mapping[str, Any] | None = None
) -> Task:
    """The task `name` with its options `task_args`, bound to a tokenizer and max_len.

    Raises:
      ValueError: an unknown task name, or an option the task does not take.
    """
    if name not in _TASKS:
        raise ValueError(f"Unknown data task {name!r}; registered tasks: {names()}.")
    cls = _TASKS[name]
    args = dict(task_args or {})
    unknown = sorted(set(args) - set(cls.options))
    if unknown:
        raise ValueError(
            f"task {name!r} got unknown options {unknown}; it takes {sorted(cls.options)}."
        )
    return cls(tokenizer, max_len, **args)


class Task:
    """Base class: a named, deterministic map from source fields to a layout (module doc).

    Class attributes:
      name: the config's `task` value.
      fields: the source fields the task reads.
      text_fields: those of them that are text (the tokenizer's corpus, `texts(field)`).
      has_image: whether examples carry a real image.
      options: the names `task_args` may hold.
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]
    text_fields: ClassVar[tuple[str, ...]]
    has_image: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = ()
    # The keys the train / eval layouts add beside "image" and "index".
    train_keys: ClassVar[tuple[str, ...]]
    prompt_keys: ClassVar[tuple[str, ...]]
    # Generative layouts need a prompt piece, a target piece and the EOS.
    min_len: ClassVar[int] = 3

    def __init__(self, tokenizer, max_len: int):
        if max_len < self.min_len:
            raise ValueError(f"task {self.name!r} needs max_len >= {self.min_len}, got {max_len}")
        self.tokenizer, self.max_len = tokenizer, int(max_len)

    @property
    def random(self) -> bool:
        """Whether `__call__` draws from its generator (then the pipeline uses random_map)."""
        return False

    def check_fields(self, fields: Collection[str], where: str = "source") -> None:
        """Raises ValueError naming what is missing when `fields` lacks one the task reads."""
        missing = [f for f in self.fields if f not in fields]
        if missing:
            hint = ""
            if "image" in missing and len(missing) == 1:
                hint = " (for text without images use task 'text_only')"
            raise ValueError(
                f"task {self.name!r} needs fields {list(self.fields)}; {where} has "
                f"{sorted(fields)}{hint}."
            )

    def __call__(self, raw: Example, index: int, rng: np.random.Generator | None = None):
        """The train layout of source example `raw` (at source `index`, for messages)."""
        raise NotImplementedError

    def prompt(self, raw: Example, index: int) -> Example:
        """The eval layout: what generation starts from (module doc)."""
        raise NotImplementedError

    # Helpers shared by the generative tasks.

    def _pieces(self, raw: Example, field: str, index: int) -> list[int]:
        if field not in raw:
            raise ValueError(
                f"task {self.name!r}: source example {index} has no field {field!r} "
                f"(it has {sorted(raw)})."
            )
        text = str(raw[field])
        pieces = self.tokenizer.pieces([text])[0] if text.strip() else []
        if not pieces:
            raise ValueError(
                f"task {self.name!r}: field {field!r} of source example {index} is empty "
                f"({text!r}); its target would be a lone EOS. Fix or drop the example."
            )
        return pieces

    def _padded(self, ids: list[int]) -> np.ndarray:
        out = np.full(self.max_len, self.tokenizer.pad_id, np.int32)
        out[: len(ids)] = ids
        return out

    def _eos(self) -> int:
        eos = self.tokenizer.eos_id
        if eos < 0:
            raise ValueError(f"task {self.name!r} needs a tokenizer with an EOS piece")
        return eos


@register
class Caption(Task):
    """{"tokens"}: the caption, exactly as the contrastive pipeline always encoded it."""

    name = "caption"
    fields = ("image", "caption")
    text_fields = ("caption",)
    train_keys = prompt_keys = ("tokens",)
    min_len = 1  # the tokenizer checks its own minimum, as it always did

    def __call__(self, raw: Example, index: int, rng: np.random.Generator | None = None):
        return {"tokens": self.tokenizer.encode([raw["caption"]], self.max_len)[0]}

    def prompt(self, raw: Example, index: int) -> Example:
        return self(raw, index)


def _split_spec(value: Any, option: str, allow_random: bool) -> str | int | float:
    """Validates a split option: "random", an int >= 0 or a float in [0, 1)."""
    if allow_random and value == "random":
        return value
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{option} must be an int or a float, got {value!r}")
    if isinstance(value, int | np.integer) and value >= 0:
        return int(value)
    if isinstance(value, float) and 0.0 <= value < 1.0:
        return float(value)
    allowed = '"random", ' if allow_random else ""
    raise ValueError(
        f"{option} must be {allowed}an int >= 0 (prefix tokens) or a float in [0, 1) "
        f"(fraction of the text), got {value!r}"
    )


def _prefix_len(spec: str | int | float, n: int, rng: np.random.Generator | None) -> int:
    """Prefix length for a text of n >= 1 pieces: at least one piece stays a target."""
    if spec == "random":
        return int(rng.integers(0, n))
    if isinstance(spec, float):
        return min(math.floor(spec * n), n - 1)
    return min(spec, n - 1)


@register
class PrefixLM(Task):
    """SimVLM's prefix LM: caption pieces + EOS split into a prefix and a target."""

    name = "prefix_lm"
    fields = ("image", "caption")
    text_fields = ("caption",)
    options = ("split", "eval_split")
    train_keys = ("tokens", "prefix_len", "has_image")
    prompt_keys = ("prompt", "prompt_len", "has_image")

    def __init__(self, tokenizer, max_len: int, split: Any = "random", eval_split: Any = 0):
        super().__init__(tokenizer, max_len)
        self.split = _split_spec(split, "split", allow_random=True)
        self.eval_split = _split_spec(eval_split, "eval_split", allow_random=False)

    @property
    def random(self) -> bool:
        return self.split == "random"

    def __call__(self, raw: Example, index: int, rng: np.random.Generator | None = None):
        pieces = self._pieces(raw, "caption", index)[: self.max_len - 1]
        return {
            "tokens": self._padded(pieces + [self._eos()]),
            "prefix_len": np.int32(_prefix_len(self.split, len(pieces), rng)),
            "has_image": np.bool_(self.has_image),
        }

    def prompt(self, raw: Example, index: int) -> Example:
        pieces = self._pieces(raw, "caption", index)[: self.max_len - 1]
        k = _prefix_len(self.eval_split, len(pieces), None)
        return {
            "prompt": self._padded(pieces[:k]),
            "prompt_len": np.int32(k),
            "has_image": np.bool_(self.has_image),
        }


@register
class TextOnly(PrefixLM):
    """prefix_lm on text alone: "has_image" False; the pipeline supplies a zero image."""

    name = "text_only"
    fields = ("caption",)
    has_image = False


@register
class VQA(Task):
    """Question pieces, answer pieces, EOS; the loss is on the answer (and EOS) only."""

    name = "vqa"
    fields = ("image", "question", "answer")
    text_fields = ("question", "answer")
    train_keys = ("tokens", "prefix_len", "has_image")
    prompt_keys = ("prompt", "prompt_len", "has_image")

    def __call__(self, raw: Example, index: int, rng: np.random.Generator | None = None):
        question = self._pieces(raw, "question", index)
        answer = self._pieces(raw, "answer", index)[: self.max_len - 2]
        question = question[: self.max_len - 1 - len(answer)]
        return {
            "tokens": self._padded(question + answer + [self._eos()]),
            "prefix_len": np.int32(len(question)),
            "has_image": np.bool_(True),
        }

    def prompt(self, raw: Example, index: int) -> Example:
        question = self._pieces(raw, "question", index)[: self.max_len - 2]
        return {
            "prompt": self._padded(question),
            "prompt_len": np.int32(len(question)),
            "has_image": np.bool_(True),
        }
