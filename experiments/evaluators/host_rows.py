"""Multi-host evaluation: each host decodes only the eval rows its own devices hold.

An evaluator chunk of B rows is placed on the devices sharded over the batch axes, so each
process's devices hold a fixed block of rows [lo, hi) of every chunk. `valid_chunks` (in
`experiments.evaluators`) asks the data for exactly those source examples, fills them into
the chunk (the other processes' rows stay zero and are never placed: placement reads only
the local devices' slices), and all-gathers the few fields an evaluator reads on the host
(labels). Outputs are gathered back to every host by the predict functions, in the global
row order, which is the source order: results equal a single-host evaluation.

The trainer's evaluation runs inside `placement(batch_sharding)`; outside it, or with one
process, every host reads every row (the single-host behaviour).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

_SHARDING: list[jax.sharding.Sharding] = []


@contextlib.contextmanager
def placement(batch_sharding: jax.sharding.Sharding):
    """Within: evaluator chunks are read per host for this batch sharding."""
    _SHARDING.append(batch_sharding)
    try:
        yield
    finally:
        _SHARDING.pop()


def row_blocks(batch_size: int) -> dict[int, tuple[int, int]] | None:
    """{process: (lo, hi)} rows of a `batch_size` chunk each process's devices hold, or None
    (single process, no placement, or a layout where a process's rows are not one block)."""
    if not _SHARDING or jax.process_count() == 1:
        return None
    sharding = _SHARDING[-1]
    rows: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((batch_size,)).items():
        sl = index[0]
        rows.setdefault(device.process_index, set()).update(range(*sl.indices(batch_size)))
    blocks = {}
    for process, owned in rows.items():
        lo, hi = min(owned), max(owned) + 1
        if len(owned) != hi - lo:
            return None
        blocks[process] = (lo, hi)
    return blocks


def host_chunks(
    batches_fn: Callable[..., Iterator[Mapping[str, Any]]],
    keys: Sequence[str],
    *,
    batch_size: int,
    num_examples: int,
    blocks: dict[int, tuple[int, int]],
    host_keys: Sequence[str] = (),
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """`valid_chunks` for several hosts: this host reads and fills only its rows of each
    chunk; `host_keys` are all-gathered so every host has them whole. Yields
    ({key: [batch_size, ...], "owned": bool [batch_size]}, n_valid)."""
    me = jax.process_index()
    lo, hi = blocks[me]
    num_chunks = math.ceil(num_examples / batch_size)
    wanted = [
        c * batch_size + r
        for c in range(num_chunks)
        for r in range(lo, hi)
        if c * batch_size + r < num_examples
    ]
    logging.info(
        "eval: process %d/%d decodes %d of %d examples (rows %d:%d of each %d-row chunk)",
        me, jax.process_count(), len(wanted), num_examples, lo, hi, batch_size,
    )  # fmt: skip
    all_keys = list(dict.fromkeys([*keys, *host_keys]))
    rows = _valid_rows(batches_fn(indices=wanted or [0]), all_keys)
    template = None
    taken = 0
    for c in range(num_chunks):
        n = min(batch_size, num_examples - c * batch_size)
        mine = max(0, min(hi, n) - lo)
        local = []
        for _ in range(mine):
            local.append(next(rows))
            taken += 1
        if template is None:
            template = local[0] if local else next(_valid_rows(batches_fn(indices=[0]), all_keys))
        chunk = {k: np.zeros((batch_size, *np.shape(template[k])), np.asarray(template[k]).dtype)
                 for k in all_keys}  # fmt: skip
        for j, row in enumerate(local):
            for k in all_keys:
                chunk[k][lo + j] = row[k]
        owned = np.zeros(batch_size, bool)
        owned[lo : lo + mine] = True
        for k in host_keys:
            chunk[k] = _gather_rows(chunk[k], blocks)
        chunk["owned"] = owned
        yield chunk, n
    if taken != len(wanted):
        raise ValueError(f"eval data gave {taken} of the {len(wanted)} rows this host asked for")


def _valid_rows(batches: Iterator[Mapping[str, Any]], keys: Sequence[str]) -> Iterator[dict]:
    for batch in batches:
        mask = np.asarray(batch["mask"], bool)
        for i in np.flatnonzero(mask):
            yield {k: np.asarray(batch[k])[i] for k in keys}


def _gather_rows(x: np.ndarray, blocks: dict[int, tuple[int, int]]) -> np.ndarray:
    """Every process's own block of x, assembled on every host."""
    stacked = np.asarray(multihost_utils.process_allgather(x, tiled=False))  # [P, B, ...]
    out = np.zeros_like(x)
    for process, (lo, hi) in blocks.items():
        out[lo:hi] = stacked[process, lo:hi]
    return out
