"""The grain input pipeline: deterministic, per-process sharded and checkpointable.

A *source* is any random-access object (`__len__`, `__getitem__(i) -> dict`) whose examples
hold "image" (uint8 [H, W, 3], any size, or encoded PNG/JPEG bytes) and "caption" (str), and
optionally "label" (int) and further text fields such as "hard_negative" (str), which only
evaluation batches carry, and only when asked for (`make_eval_batches(extra_texts=...)`).
A *task* (data.tasks, by name; default "caption") decides which fields an example needs and
the layout they become (caption tokens; prefix-LM, VQA or text-only tokens with a prefix
length); data.mixing mixes several sources, each with its task, by a ratio.

Training order, for one seed:

    range(n) -> shuffle (reseeded every epoch) -> drop n % process_count -> load + augment
             -> take every process_count-th example from process_index -> repeat -> batch

"load" runs the task (with its randomness, if any). Augmentation, like the task, runs *before*
the per-process split and is keyed by the example's position in the global epoch order
(grain's `random_map`), so the union of all processes' batches at a step is the same set of
examples, identically augmented, whatever the process count. Every random choice comes from
grain (`shuffle`, `random_map`), never from global RNG state, so the iterator state (a small
JSON dict) restores the stream exactly.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from data import preprocess, tasks
from data.tokenizer import Tokenizer

Example = dict[str, Any]
# Source indices in eval batches: their padding rows hold -1, which no example has.
_INDEX_KEYS = ("index", "text_index")


def _process_info(index: int | None, count: int | None) -> tuple[int, int]:
    if index is None or count is None:
        import jax  # Imported lazily: the data package must not need jax to be importable.

        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} outside [0, process_count={count})")
    return index, count


def _missing_field(field: str, raw: Example, index: int) -> str:
    return (
        f"extra_texts names the field {field!r}, but source example {index} has only {sorted(raw)}."
    )


def source_fields(source) -> list[str]:
    """The fields of the source's examples: its `fields` attribute, else example 0's keys."""
    fields = getattr(source, "fields", None)
    return sorted(fields) if fields is not None else sorted(source[0])


def resolve_task(task: str | tasks.Task, tokenizer, max_len: int, task_args=None) -> tasks.Task:
    """A task from its name and options (or a task object, passed through)."""
    if isinstance(task, tasks.Task):
        if task_args:
            raise ValueError("task_args apply to a task given by name, not to a Task object")
        if task.max_len != max_len:
            raise ValueError(
                f"task {task.name!r} was built for max_len={task.max_len}, not {max_len}"
            )
        return task
    return tasks.get_task(task, tokenizer, max_len, task_args)


def _read_with_index(source, index: int) -> tuple[int, Example]:
    """(j, example): the example at `index` and the source index j whose pair it really is.

    j == index except for sources that stand one example in for another and say so through
    `read_with_index` (user pairs replace an unreadable image by the next readable pair).
    """
    read = getattr(source, "read_with_index", None)
    return read(index) if read is not None else (index, source[index])


class _TaskLoad:
    """Source index (+ grain's per-position generator) -> the task's layout, the decoded
    image (tasks with images), "index", "label" if the source has one (unless
    `keep_label=False`) and "<field>_tokens" for each of `extra_texts`.

    `prompt=True` gives the task's eval layout (`Task.prompt`) instead of its train layout,
    and "text_index": the source index whose texts the row holds (`_read_with_index`), so
    evaluators read the references of the pair actually used.
    """

    def __init__(
        self,
        source,
        task: tasks.Task,
        *,
        prompt: bool = False,
        keep_label: bool = True,
        extra_texts: Sequence[str] = (),
    ):
        self.source, self.task, self.prompt = source, task, prompt
        self.keep_label, self.extra_texts = keep_label, tuple(extra_texts)

    def __call__(self, index: int, rng: np.random.Generator | None = None) -> Example:
        index = int(index)
        used, raw = _read_with_index(self.source, index)
        ex = self.task.prompt(raw, index) if self.prompt else self.task(raw, index, rng)
        if self.task.has_image:
            ex["image"] = preprocess.decode(raw["image"])
        ex["index"] = np.int64(index)
        if self.prompt:
            ex["text_index"] = np.int64(used)
        if self.keep_label and "label" in raw:
            ex["label"] = np.int32(raw["label"])
        for field in self.extra_texts:
            if field not in raw:
                raise ValueError(_missing_field(field, raw, index))
            tokenizer, max_len = self.task.tokenizer, self.task.max_len
            ex[f"{field}_tokens"] = tokenizer.encode([raw[field]], max_len)[0]
        return ex


class _ImageTransform:
    """Resize (or light random crop + brightness/contrast jitter) and normalise to float32.

    An example without an image (task text_only) gets zeros float32 [S, S, 3], so it
    batches with image-text examples.
    """

    def __init__(self, image_size: int, mean, std, augment: bool):
        self.image_size, self.mean, self.std, self.augment = image_size, mean, std, augment

    def __call__(self, ex: Example, rng: np.random.Generator | None = None) -> Example:
        if "image" not in ex:
            return {**ex, "image": np.zeros((self.image_size, self.image_size, 3), np.float32)}
        image = ex["image"]
        if self.augment:
            image = preprocess.random_resized_crop(image, self.image_size, rng)
            image = preprocess.color_jitter(image, rng)
        else:
            image = preprocess.resize(image, self.image_size)
        return {**ex, "image": preprocess.normalize(image, self.mean, self.std)}


def _read_options(prefetch: int, batch_size: int, num_threads: int) -> grain.ReadOptions:
    # Threads, not processes: the machine has 2 cores, PIL and numpy release the GIL, and
    # forking would duplicate the jax runtime. prefetch=0 makes reading synchronous.
    if prefetch <= 0:
        return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch * batch_size)


def make_train_iterator(
    source,
    *,
    tokenizer: Tokenizer,
    global_batch_size: int,
    image_size: int,
    max_len: int,
    seed: int,
    augment: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle: bool = True,
    prefetch: int = 2,
    num_epochs: int | None = None,
    num_threads: int = 2,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
    task: str | tasks.Task = "caption",
    task_args: Mapping[str, Any] | None = None,
) -> grain.DatasetIterator:
    """Returns this process's iterator of training batches (infinite unless `num_epochs`).

    Each batch (b = global_batch_size // process_count) holds:
      "image": float32 [b, S, S, 3] normalised with mean/std (default: pixels in [-1, 1]);
        zeros for tasks without images (text_only);
      "tokens": int32 [b, L] caption ids, EOS-terminated, padded with tokenizer.pad_id
        (task "caption"; other tasks' layouts: data.tasks, e.g. "prefix_len" int32 [b] and
        "has_image" bool [b]);
      "index": int64 [b] source index of each example (for checking data order);
      "label": int32 [b] when the source has labels.
    Other text fields (e.g. "hard_negative") are never tokenised for training: nothing in a
    train step reads them, and they would travel to the devices every step.

    `task`/`task_args` name the task (data.tasks) and its options; a source lacking a field
    the task needs raises ValueError here, before anything is read or compiled.

    Each epoch is reshuffled; `n % process_count` examples (different ones each epoch) are
    left out so that all processes run the same number of steps. Save `it.get_state()` and
    call `set_state` on an iterator built with the same arguments to resume exactly.
    """
    process_index, process_count = _process_info(process_index, process_count)
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by "
            f"process_count={process_count}"
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    local_batch = global_batch_size // process_count
    usable = len(source) - len(source) % process_count
    if usable == 0:
        raise ValueError(f"source has {len(source)} examples, fewer than {process_count} processes")
    task = resolve_task(task, tokenizer, max_len, task_args)
    task.check_fields(source_fields(source))

    ds = grain.MapDataset.range(len(source)).seed(seed)
    if shuffle:
        ds = ds.shuffle()
    load = _TaskLoad(source, task)
    # A task without randomness stays a plain map: the pipeline's structure, hence every
    # downstream seed grain derives from it, is then exactly what it always was.
    ds = ds[:usable].random_map(load) if task.random else ds[:usable].map(load)
    transform = _ImageTransform(image_size, mean, std, augment)
    # random_map seeds each example's generator from (pipeline seed, epoch, position).
    ds = ds.random_map(transform) if augment else ds.map(transform)
    ds = ds[process_index::process_count].repeat(num_epochs)
    iter_ds = ds.to_iter_dataset(_read_options(prefetch, local_batch, num_threads))
    return iter(iter_ds.batch(local_batch, drop_remainder=True))


def _pad_batch(batch: Example, batch_size: int) -> Example:
    """Pads [n, ...] leaves to [batch_size, ...] (indices -1) and adds "mask" bool [batch_size]."""
    n = len(batch["index"])
    out = {}
    for key, value in batch.items():
        fill = -1 if key in _INDEX_KEYS else 0
        pad = np.full((batch_size - n, *value.shape[1:]), fill, value.dtype)
        out[key] = np.concatenate([value, pad])
    out["mask"] = np.arange(batch_size) < n
    return out


def make_eval_batches(
    source,
    *,
    tokenizer: Tokenizer,
    batch_size: int,
    image_size: int,
    max_len: int,
    extra_texts: Sequence[str] = (),
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
    task: str | tasks.Task = "caption",
    task_args: Mapping[str, Any] | None = None,
    indices: Sequence[int] | None = None,
) -> Iterator[Example]:
    """Yields one in-order pass over the source, without augmentation (images resized to S x S).

    Batches hold the task's eval layout (`Task.prompt`; a name from data.tasks, or a Task):
    for "caption" (the default) the caption tokens of `make_train_iterator`; for generative
    tasks the prompt, "prompt" int32 [batch_size, L] (prompt pieces only, padded),
    "prompt_len" int32 [batch_size] and "has_image" bool [batch_size]. Besides: "image",
    "index" int64 [batch_size], "label" when the source has labels, "text_index" int64
    [batch_size] (the source index whose texts the row holds: its own index, unless the
    source stood another example in for an unreadable one, see `_read_with_index`), "mask"
    bool [batch_size] (False on padding), and "<field>_tokens" int32 [batch_size, L] for
    each text field named in `extra_texts` (e.g. ("hard_negative",); none by default).
    References for scoring come from the source's `texts(field)` at "text_index".

    The last batch is padded to `batch_size` (padding has index and text_index -1), so no
    example is dropped or counted twice. With process_count > 1, process p reads examples
    p, p + P, ... and every process yields the same number of batches (some possibly all
    padding), as multi-host evaluation needs. `indices` (instead of process striding): read
    exactly these source examples, in this order (multi-host evaluation: each host reads
    the rows its devices hold).

    Raises:
      ValueError: no tokenizer, an empty source, a field of `extra_texts` that the source's
        examples lack (checked on example 0 up front), or one the task needs.
    """
    if isinstance(extra_texts, str):
        raise TypeError(f"extra_texts must be a sequence of field names, got {extra_texts!r}")
    if tokenizer is None:
        raise ValueError("a tokenizer is required: the task encodes the examples' texts")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} outside [0, {process_count})")
    n = len(source)
    if n == 0:
        raise ValueError("cannot evaluate on an empty source")
    if extra_texts:
        first = source[0]
        for field in extra_texts:
            if field not in first:
                raise ValueError(_missing_field(field, first, 0))
    if indices is not None:
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise ValueError(f"indices must lie in [0, {n}), got {indices.min()}..{indices.max()}")
    num_batches = math.ceil(math.ceil(n / process_count) / batch_size)
    if indices is not None:
        num_batches = math.ceil(len(indices) / batch_size)
    task = resolve_task(task, tokenizer, max_len, task_args)
    task.check_fields(source_fields(source))
    load = _TaskLoad(source, task, prompt=True, extra_texts=extra_texts)
    transform = _ImageTransform(image_size, mean, std, augment=False)
    if indices is not None:
        ds = grain.MapDataset.source(indices.tolist()).map(load).map(transform)
    else:
        ds = grain.MapDataset.range(n)[process_index::process_count].map(load).map(transform)
    batches = ds.to_iter_dataset(_read_options(2, batch_size, num_threads)).batch(batch_size)
    # A separate generator, so that the checks above raise at the call, not at first `next`.
    return _padded_batches(batches, num_batches, batch_size, lambda: transform(load(0)))


def _padded_batches(batches, num_batches: int, batch_size: int, example_0) -> Iterator[Example]:
    """Pads each batch to `batch_size`, then adds all-padding batches up to `num_batches`."""
    empty = None
    for batch in batches:
        empty = {k: v[:0] for k, v in batch.items()}
        num_batches -= 1
        yield _pad_batch(batch, batch_size)
    if num_batches > 0 and empty is None:
        # This process got no examples (n < process_count): shape the padding like example 0.
        empty = {k: np.asarray(v)[None][:0] for k, v in example_0().items()}
    for _ in range(num_batches):
        yield _pad_batch(empty, batch_size)


def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], max_len: int, batch_size: int
) -> Iterator[Example]:
    """Yields {"tokens": int32 [batch_size, L], "mask": bool [batch_size]} over `texts`.

    For class-name prompt embeddings: the last batch is padded (mask False) like eval batches.
    """
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        tokens = np.full((batch_size, max_len), tokenizer.pad_id, np.int32)
        tokens[: len(chunk)] = tokenizer.encode(chunk, max_len)
        yield {"tokens": tokens, "mask": np.arange(batch_size) < len(chunk)}


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        return {k: _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def iterator_state_to_json(state: Any) -> str:
    """Serialises a grain iterator state (nested dicts/lists of scalars, bytes) to JSON."""
    return json.dumps(_to_jsonable(state), sort_keys=True)


def iterator_state_from_json(s: str) -> Any:
    """Inverse of `iterator_state_to_json`."""
    return _from_jsonable(json.loads(s))
