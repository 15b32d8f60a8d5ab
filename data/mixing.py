"""Training on several sources mixed by a ratio (SimVLM's image-text + text-only mix).

    config.data.mix = (("vlax_shapes", 0.8, "prefix_lm"), ("vlax_shapes_text", 0.2, "text_only"))

Each component is a source with a weight and its own task (data.tasks); all components'
tasks must give the same layout (prefix_lm, text_only and vqa do: "tokens", "prefix_len",
"has_image"), so one jitted step serves every batch. Order, for one seed:

    component c: range(n_c) -> shuffle (own seed, reseeded every epoch) -> load + task
                 -> image transform -> repeat forever
    mix (grain.MapDataset.mix: a fixed interleave in the weights' proportions)
        -> take every process_count-th element from process_index -> batch

Everything random is keyed by position (grain's `shuffle` and `random_map`), and the mix is
a pure function of the position, so the global stream does not depend on the number of
processes, the union of all processes' batches at a step is the single-process batch, and
the iterator state (a small JSON dict) restores the stream exactly. The interleave spreads
each component evenly through the stream (grain rounds the weights to integers, the smallest
to 100), so every batch, not only a long run, holds close to the asked ratio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from data import pipeline, tasks
from data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Component:
    """One source of a mix: its weight (any positive number; weights are relative) and task."""

    source: Any
    weight: float
    task: str | tasks.Task = "caption"
    task_args: Mapping[str, Any] | None = None
    name: str = ""  # for messages, e.g. the data spec


class _Tag:
    """Adds "source": int32 [] (the component's position in the mix) and drops "label"
    (a component without labels could not batch with one that has them)."""

    def __init__(self, position: int):
        self.position = np.int32(position)

    def __call__(self, ex: pipeline.Example) -> pipeline.Example:
        return {**{k: v for k, v in ex.items() if k != "label"}, "source": self.position}


def _component_seed(seed: int, position: int) -> int:
    # Distinct, deterministic seeds per component, so two components over the same source
    # are not shuffled alike.
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


def _check(components: Sequence[Component], resolved: list[tasks.Task]) -> None:
    for position, (component, task) in enumerate(zip(components, resolved, strict=True)):
        where = f"mix component {position} ({component.name or 'unnamed'})"
        if not component.weight > 0:
            raise ValueError(f"{where}: weight must be > 0, got {component.weight!r}")
        if not len(component.source):
            raise ValueError(f"{where}: the source is empty")
        task.check_fields(pipeline.source_fields(component.source), where=where)
    layouts = {tuple(sorted(task.train_keys)) for task in resolved}
    if len(layouts) > 1:
        found = [
            (c.name or i, t.name, t.train_keys)
            for i, (c, t) in enumerate(zip(components, resolved, strict=True))
        ]
        raise ValueError(
            f"mix components' tasks give different layouts, which cannot share a batch: {found}"
        )


def make_mixed_train_iterator(
    components: Sequence[Component],
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
    num_threads: int = 2,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
) -> grain.DatasetIterator:
    """Returns this process's infinite iterator of batches drawn from `components`.

    Each batch (b = global_batch_size // process_count) holds the components' common task
    layout (e.g. "tokens" int32 [b, L], "prefix_len" int32 [b], "has_image" bool [b]),
    "image" float32 [b, S, S, 3] (zeros for text_only examples), "index" int64 [b] (index
    in its own source) and "source" int32 [b] (which component). "label" is dropped.

    Raises:
      ValueError: no component, a weight <= 0, an empty source, a source lacking a field
        its task needs, tasks whose layouts differ, or an indivisible batch size.
    """
    if not components:
        raise ValueError("a mix needs at least one component")
    process_index, process_count = pipeline._process_info(process_index, process_count)
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by "
            f"process_count={process_count}"
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    resolved = [pipeline.resolve_task(c.task, tokenizer, max_len, c.task_args) for c in components]
    _check(components, resolved)
    transform = pipeline._ImageTransform(image_size, mean, std, augment)
    streams = []
    for position, (component, task) in enumerate(zip(components, resolved, strict=True)):
        ds = grain.MapDataset.range(len(component.source)).seed(_component_seed(seed, position))
        if shuffle:
            ds = ds.shuffle()
        load = pipeline._TaskLoad(component.source, task, keep_label=False)
        ds = ds.random_map(load) if task.random else ds.map(load)
        ds = ds.random_map(transform) if augment else ds.map(transform)
        streams.append(ds.map(_Tag(position)).repeat())
    mixed = grain.MapDataset.mix(streams, [float(c.weight) for c in components])
    local_batch = global_batch_size // process_count
    mixed = mixed[process_index::process_count]
    read = pipeline._read_options(prefetch, local_batch, num_threads)
    return iter(mixed.to_iter_dataset(read).batch(local_batch, drop_remainder=True))
