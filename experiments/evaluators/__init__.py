"""Evaluators: a name registry, the evaluator contract, and helpers the evaluators share.

Configured under `config.evals.<name>` with a `type` naming a registered evaluator:

    config.evals.shapes_zs = ConfigDict(dict(
        type="zero_shot", every_steps=500, data="vlax_shapes", split="test", batch_size=64))

The trainer builds them with `build_evaluators(config.evals, make_data=...)`, which validates
every config before anything compiles. An evaluator declares in `methods` the objective's
inference methods it needs (`("embed_image", "embed_text")`, `("generate",)`, ...); the
trainer checks the objective has them, jits each one once with the right shardings (it never
names a method itself), and every `every_steps` steps (0/None: only at the end) calls
`evaluator.run(predict)` with `predict[name](*arrays, **static) -> outputs` as numpy trees:
each array has a leading batch dimension (placed sharded over the batch mesh axes), keyword
arguments are static (e.g. decoding settings). For the contrastive methods:
    embed_image(images float32 [batch_size, S, S, 3]) -> [batch_size, D]  (L2-normalised)
    embed_text(tokens int32 [batch_size, L]) -> [batch_size, D]            (L2-normalised)
Evaluators re-batch the valid (mask=True) rows of the data into chunks of exactly `batch_size`
rows, zero-padding the last chunk and discarding its padding outputs, so a jitted method sees
one shape and padding never reaches a metric.

`make_data(spec, split, *, extra_texts=()) -> (batches_fn, info)`: `batches_fn()` returns a
fresh deterministic iterator of dicts {"image", "tokens", "label" (optional), "<field>_tokens"
for each field in `extra_texts`, "text_index" int64 [b], "mask" bool [b]} over the split in
source order; `info` provides (as attributes or keys) `fields` (the source's example fields,
for checks before training), `captions(limit) -> list[str]` and `texts(field, limit)` (the
first `limit` caption / field texts in source order), `class_names`, `templates` and
`encode_texts(list[str]) -> int32 [n, L]`. Evaluators check at construction that the data has
what they need, so a mismatch fails before training, not after it.

"text_index" is the source index whose texts a row holds: the row's own index, unless the
source stood the next readable example in for one whose image stays unreadable (user pairs);
padding rows have -1. So an evaluator that scores texts (reference captions, answers, caption
groups) reads them at each row's "text_index" (`texts_at`), never by row position, and reads
it as a host key of `valid_chunks`, so every host has it whole under multi-host evaluation.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from experiments.evaluators import host_rows

EmbedFn = Callable[[np.ndarray], Any]
PredictFns = Mapping[str, Callable[..., Any]]
MakeData = Callable[[str, str], tuple[Callable[[], Iterator[Mapping[str, Any]]], Any]]
CONTRASTIVE_METHODS = ("embed_image", "embed_text")


class Evaluator(Protocol):
    every_steps: int  # 0 = only at the end of training
    methods: tuple[str, ...]  # the objective's inference methods `run` calls

    def run(self, predict: PredictFns) -> dict[str, float]: ...


_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator registering an evaluator under `name` (the config's `type`)."""

    def decorator(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"evaluator {name!r} is already registered to {_REGISTRY[name]}")
        _REGISTRY[name] = cls
        return cls

    return decorator


def get_evaluator(name: str) -> type:
    """The evaluator class registered as `name`; unknown names list the registered ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown evaluator {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def build_evaluators(evals_config: Mapping[str, Any] | None, *, make_data: MakeData) -> dict:
    """Instantiates every `evals_config.<name>` by its `type`: {name: Evaluator}."""
    evaluators = {}
    for name, config in (evals_config or {}).items():
        if not isinstance(config, Mapping) and not hasattr(config, "keys"):
            raise ValueError(f"evals.{name} must be a config mapping, got {type(config)}")
        if "type" not in config:
            raise ValueError(f"evals.{name} lacks 'type'; registered: {sorted(_REGISTRY)}")
        try:
            evaluators[name] = get_evaluator(config["type"])(config, make_data=make_data)
        except ValueError as e:
            raise ValueError(f"evals.{name}: {e}") from e
    return evaluators


def check_config(
    config: Mapping[str, Any], *, type_name: str, required: Sequence[str], optional: Mapping
) -> dict[str, Any]:
    """Validates an eval config's keys; returns a plain dict with `optional` defaults filled.

    Common fields: `type` (must equal `type_name` if given), `every_steps` (int >= 0 or None,
    default 0), `max_examples` (int >= 1 or None), `batch_size` (int >= 1).
    """
    given = {k: config[k] for k in config.keys()}  # noqa: SIM118 (ConfigDict is not a dict)
    allowed = {"type", *required, *optional}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"{type_name}: unknown config keys {unknown}; allowed: {sorted(allowed)}")
    missing = [k for k in required if k not in given]
    if missing:
        raise ValueError(f"{type_name}: missing required config keys {missing}")
    if given.get("type", type_name) != type_name:
        raise ValueError(f"{type_name}: config type is {given['type']!r}")
    cfg = {**optional, **given}
    cfg["every_steps"] = int(cfg.get("every_steps") or 0)
    if cfg["every_steps"] < 0:
        raise ValueError(f"{type_name}: every_steps must be >= 0, got {cfg['every_steps']}")
    if int(cfg.get("batch_size", 1)) < 1:
        raise ValueError(f"{type_name}: batch_size must be >= 1, got {cfg['batch_size']}")
    if cfg.get("max_examples") is not None and int(cfg["max_examples"]) < 1:
        raise ValueError(f"{type_name}: max_examples must be >= 1, got {cfg['max_examples']}")
    return cfg


def info_field(info: Any, name: str) -> Any:
    """Reads `name` from a dataset info object or mapping; None when absent."""
    if isinstance(info, Mapping):
        return info.get(name)
    return getattr(info, name, None)


def require_fields(info: Any, needed: Sequence[str], where: str) -> None:
    """Raises ValueError when the dataset's examples lack a field the evaluator needs."""
    fields = info_field(info, "fields")
    if fields is None:
        return  # the data contract does not say; the first batch will tell
    missing = [f for f in needed if f not in fields]
    if missing:
        raise ValueError(
            f"{where}: the dataset's examples have no {missing} (they have {sorted(fields)}); "
            "evaluate on data that has them, or remove this evaluator."
        )


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Zero-pads [n, ...] to [rows, ...] along the first axis."""
    if x.shape[0] == rows:
        return x
    return np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)])


def valid_chunks(
    batches_fn: Callable[[], Iterator[Mapping[str, Any]]],
    keys: Sequence[str],
    *,
    batch_size: int,
    max_examples: int | None = None,
    host_keys: Sequence[str] = (),
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Re-batches the mask=True rows of `batches_fn()` into fixed-size chunks.

    Yields ({key: [batch_size, ...], "owned": bool [batch_size]}, n_valid): only the last
    chunk has n_valid < batch_size (the rest is zeros). Stops after `max_examples` valid rows,
    in iteration order. `keys` feed the predict functions; `host_keys` are also read on the
    host (e.g. labels). Under multi-host evaluation (`host_rows.placement`, and data that says
    its `num_examples`) each host decodes only the rows its devices hold: the other rows of
    `keys` are zeros (`owned` False), `host_keys` are complete on every host.
    """
    blocks = host_rows.row_blocks(batch_size)
    total = getattr(batches_fn, "num_examples", None)
    if blocks is not None and total is not None:
        n = total if max_examples is None else min(total, max_examples)
        yield from host_rows.host_chunks(
            batches_fn, keys, batch_size=batch_size, num_examples=n, blocks=blocks,
            host_keys=host_keys,
        )  # fmt: skip
        return
    keys = list(dict.fromkeys([*keys, *host_keys]))
    buffers: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    buffered = taken = 0

    def emit(n: int) -> dict[str, np.ndarray]:
        out = {}
        for k in keys:
            joined = np.concatenate(buffers[k])
            out[k], rest = _pad_rows(joined[:n], batch_size), joined[n:]
            buffers[k] = [rest]
        out["owned"] = np.arange(batch_size) < n
        return out

    for batch in batches_fn():
        if "mask" not in batch:
            raise ValueError(f"eval batch lacks 'mask' (has {sorted(batch)})")
        mask = np.asarray(batch["mask"], dtype=bool)
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"eval batch lacks {missing} (has {sorted(batch)})")
        n_new = int(mask.sum())
        if max_examples is not None:
            n_new = min(n_new, max_examples - taken)
        for k in keys:
            value = np.asarray(batch[k])
            if value.shape[:1] != mask.shape:
                raise ValueError(f"batch[{k!r}] has {value.shape[0]} rows, mask has {mask.size}")
            buffers[k].append(value[mask][:n_new])
        buffered += n_new
        taken += n_new
        while buffered >= batch_size:
            yield emit(batch_size), batch_size
            buffered -= batch_size
        if max_examples is not None and taken >= max_examples:
            break
    if buffered:
        yield emit(buffered), buffered


def texts_at(read: Callable[[int], Sequence[Any]], text_index: np.ndarray, where: str) -> list[Any]:
    """The entries of `read(limit)` (the first `limit` texts in source order, e.g.
    `info.captions`) at each row's text_index (int [n]): a list of n entries.

    Raises ValueError naming the indices when one is negative (a padding row's) or beyond what
    the data has.
    """
    text_index = np.asarray(text_index)
    if not text_index.size:
        return []
    lo, limit = int(text_index.min()), int(text_index.max()) + 1
    items = list(read(limit))
    if lo < 0 or len(items) < limit:
        raise ValueError(
            f"{where}: rows name text_index {lo}..{limit - 1}, but the data has {len(items)} "
            "text entries (text_index is the source index of each valid row's texts)"
        )
    return [items[i] for i in text_index]


def embed_chunk(fn: EmbedFn, chunk: np.ndarray, n_valid: int) -> np.ndarray:
    """Calls an embed function on one [batch_size, ...] chunk; returns its first n_valid rows."""
    emb = np.asarray(fn(chunk))
    if emb.ndim != 2 or emb.shape[0] != chunk.shape[0]:
        raise ValueError(f"embed function returned {emb.shape} for input {chunk.shape}")
    return emb[:n_valid]


def embed_all(fn: EmbedFn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Embeds [n, ...] in zero-padded chunks of `batch_size` rows: [n, D]."""
    return np.concatenate(
        [
            embed_chunk(
                fn, _pad_rows(x[i : i + batch_size], batch_size), len(x[i : i + batch_size])
            )
            for i in range(0, len(x), batch_size)
        ]
    )


# Importing the evaluator modules registers them; they import the helpers above.
from experiments.evaluators import (  # noqa: E402, F401
    captioning,
    hard_negatives,
    retrieval,
    vqa,
    zero_shot,
)
