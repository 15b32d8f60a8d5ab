"""Parameter-name tables between vlax and PyTorch state dicts, shared by export and import.

A table is a list of `Rule(vlax, torch, kind)`: path patterns on both sides, where `{i}`
stands for a layer index, and the kind of array transform between the two layouts. One table
per target (HF CLIPModel, SiglipModel, BertModel, the repo's torch modules) serves both
directions, so export and import cannot drift apart:

    to_torch(params, table)            vlax params -> {torch name: np.ndarray}
    from_torch(state, table, abstract) state dict -> vlax params shaped like `abstract`

Every vlax parameter must match exactly one rule and every tensor of an imported state dict
must be used (or listed as ignorable), so a feature one side lacks is an error naming the
parameter, never a silently different model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np


class InteropError(ValueError):
    """A checkpoint or model that no interop table represents; the message says what to do."""


class MappingError(InteropError):
    """A parameter or tensor that the table cannot place."""


def _dense_to(x):  # Flax kernel [in, out] -> torch Linear weight [out, in]
    return x.T


def _conv_to(x):  # [kh, kw, in, out] -> [out, in, kh, kw]
    return x.transpose(3, 2, 0, 1)


def _heads_in_to(x):  # DenseGeneral [D, H, hd] -> Linear weight [H*hd, D]
    return x.reshape(x.shape[0], -1).T


def _heads_out_to(x):  # DenseGeneral [H, hd, D] -> Linear weight [D, H*hd]
    return x.reshape(-1, x.shape[-1]).T


def _squeeze_leading(x):
    while x.ndim > 1 and x.shape[0] == 1:
        x = x[0]
    return x


# kind -> (vlax -> torch, (torch, vlax shape) -> vlax)
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "identity": (lambda x: x, lambda t, shape: t.reshape(shape)),
    "dense": (_dense_to, lambda t, shape: t.T.reshape(shape)),
    "conv": (_conv_to, lambda t, shape: t.transpose(2, 3, 1, 0).reshape(shape)),
    "heads_in": (_heads_in_to, lambda t, shape: t.T.reshape(shape)),
    "heads_out": (_heads_out_to, lambda t, shape: t.T.reshape(shape)),
    # [H, hd] attention biases -> [H*hd]
    "flatten": (lambda x: x.reshape(-1), lambda t, shape: t.reshape(shape)),
    # [1, 1, D] class tokens -> [D], [1, N, D] position tables -> [N, D]
    "squeeze": (_squeeze_leading, lambda t, shape: t.reshape(shape)),
    # a scalar -> [1] (SigLIP's logit scale and bias)
    "vector1": (lambda x: x.reshape(1), lambda t, shape: t.reshape(shape)),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """`vlax` and `torch` are "/"- and "."-joined path patterns; `{i}` is a layer index.

    `vlax` may be a tuple of patterns fused into one tensor: each part is transformed and
    the parts are concatenated along torch's first axis (nn.MultiheadAttention's
    in_proj_weight = [q; k; v]); import splits it into equal parts.
    """

    vlax: str | tuple[str, ...]
    torch: str
    kind: str = "identity"

    def __post_init__(self):
        if self.kind not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.kind!r}; known: {sorted(TRANSFORMS)}")

    @property
    def parts(self) -> tuple[str, ...]:
        return self.vlax if isinstance(self.vlax, tuple) else (self.vlax,)


def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(f"^{escaped}$")


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """{"img/encoder/block_0/mlp/fc1/kernel": array} of a (possibly device, possibly
    logically boxed) params tree."""
    leaves = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(jax.device_get(x))
        for p, x in leaves
    }


def unflatten_params(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def unscan(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Splits `nn.scan`-stacked "<encoder>/blocks/..." leaves [depth, ...] into
    "<encoder>/block_{i}/..." so one table serves scanned and unscanned models."""
    out = {}
    for path, x in flat.items():
        head, sep, tail = path.partition("/blocks/")
        if not sep:
            out[path] = x
            continue
        for i in range(x.shape[0]):
            out[f"{head}/block_{i}/{tail}"] = x[i]
    return out


def _match_vlax(path: str, rules: Sequence[Rule]) -> tuple[Rule, int, str | None]:
    hits = []
    for rule in rules:
        for part, template in enumerate(rule.parts):
            m = _pattern(template).match(path)
            if m:
                hits.append((rule, part, m.groupdict().get("i")))
    if len(hits) != 1:
        raise MappingError(
            f"parameter {path!r} matches {len(hits)} rules of the table (expected exactly one)"
        )
    return hits[0]


def _match_torch(name: str, rules: Sequence[Rule]) -> tuple[Rule, str | None] | None:
    hits = [(r, m.groupdict().get("i")) for r in rules if (m := _pattern(r.torch).match(name))]
    if len(hits) > 1:
        raise MappingError(f"tensor {name!r} matches {len(hits)} rules of the table")
    return hits[0] if hits else None


def _fill(template: str, index: str | None) -> str:
    return template if index is None else template.replace("{i}", index)


def to_torch(
    params: Any, rules: Sequence[Rule], *, dtype=np.float32, where: str = "export"
) -> dict[str, np.ndarray]:
    """vlax params (any float dtype, scanned or not) -> {torch name: contiguous `dtype` array}."""
    pieces: dict[str, tuple[Rule, dict[int, np.ndarray]]] = {}
    for path, x in unscan(flatten_params(params)).items():
        try:
            rule, part, index = _match_vlax(path, rules)
        except MappingError as e:
            raise MappingError(f"{where}: {e}; the target has no place for it.") from None
        name = _fill(rule.torch, index)
        parts = pieces.setdefault(name, (rule, {}))[1]
        if part in parts:
            raise MappingError(f"{where}: two parameters map to the tensor {name!r}")
        parts[part] = TRANSFORMS[rule.kind][0](x.astype(dtype))
    state = {}
    for name, (rule, parts) in pieces.items():
        if len(parts) != len(rule.parts):
            raise MappingError(f"{where}: {name} needs all of {rule.parts}; got {sorted(parts)}")
        value = (
            np.concatenate([parts[j] for j in range(len(parts))]) if len(parts) > 1 else parts[0]
        )
        # ascontiguousarray makes 0-d arrays 1-d: keep the shape (scalars like logit_scale).
        state[name] = np.ascontiguousarray(value).reshape(value.shape)
    return state


def from_torch(
    state: Mapping[str, Any],
    rules: Sequence[Rule],
    abstract: Any,
    *,
    ignore: Iterable[str] = (),
    where: str = "import",
) -> dict:
    """A state dict -> vlax params with the structure, shapes and dtypes of `abstract`
    (ShapeDtypeStructs or arrays of an unscanned model: import with scan=False and switch
    scan on afterwards if wanted)."""
    want = _shapes(abstract)
    if any("/blocks/" in path for path in want):
        raise MappingError(f"{where}: import into a scanned model (scan=True); use scan=False")
    ignore_patterns = [re.compile(p) for p in ignore]
    out: dict[str, np.ndarray] = {}
    unused = []
    for name, tensor in state.items():
        if any(p.fullmatch(name) for p in ignore_patterns):
            continue
        hit = _match_torch(name, rules)
        paths = [_fill(t, hit[1]) for t in hit[0].parts] if hit else []
        if not paths or any(path not in want for path in paths):
            unused.append(name)
            continue
        rule = hit[0]
        chunks = np.split(np.asarray(tensor), len(paths)) if len(paths) > 1 else [tensor]
        for path, chunk in zip(paths, chunks, strict=True):
            shape, dtype = want[path]
            value = TRANSFORMS[rule.kind][1](np.asarray(chunk), shape)
            if value.shape != tuple(shape):
                raise MappingError(f"{where}: {name} gives {value.shape}, {path} needs {shape}")
            out[path] = value.astype(dtype)
    missing = sorted(set(want) - set(out))
    if unused or missing:
        raise MappingError(
            f"{where}: the checkpoint and the model do not match: "
            + (
                f"{len(unused)} tensors have no place in the model, e.g. {unused[:4]}; "
                if unused
                else ""
            )
            + (
                f"{len(missing)} parameters are not in the checkpoint, e.g. {missing[:4]}"
                if missing
                else ""
            )
        )
    return unflatten_params(out)


def _shapes(abstract: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): (tuple(x.shape), np.dtype(x.dtype))
        for p, x in leaves
    }
