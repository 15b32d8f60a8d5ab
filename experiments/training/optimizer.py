"""Optimizer construction: lr schedule, decoupled weight decay, gradient clipping, freezing.

The optimizer config (usually `config.optim`, an ml_collections ConfigDict):

    name            "adamw" | "sgd"                                       required
    lr              peak learning rate                                    required
    total_steps     length of the schedule, warmup included               required
    warmup_steps    linear warmup from 0 to `lr`                          0
    schedule        "cosine" | "linear" | "constant" (after the warmup)   "cosine"
    end_lr_factor   the decay ends at lr * end_lr_factor                  0.0
    weight_decay    decoupled decay, multiplied by the lr as in AdamW     0.0
    wd_exclude      regex, `re.search` on the path: matches get no decay  DEFAULT_WD_EXCLUDE
    grad_clip_norm  clip the global norm of the trainable grads; None/0 off  None
    freeze          regexes, `re.fullmatch` on the path: matches stay fixed  ()
    adamw only:     b1=0.9, b2=0.999, eps=1e-8, mu_dtype=None (e.g. "bfloat16")
    sgd only:       momentum=0.0, nesterov=False

A parameter's path is its "/"-joined tree path, e.g. "img/Transformer/encoderblock_0/
MlpBlock_0/Dense_0/kernel". `freeze` is a sequence rather than a {regex: "frozen"} mapping
because ConfigDict rejects dots in keys. It uses `fullmatch` because it names subtrees
("img/.*"): a search for "img" would also freeze "txt/img_proj/kernel". `wd_exclude` names
kinds of leaves at the end of a path ("bias$"), so it searches.

Frozen parameters (LiT's locked tower, Flamingo's LM) are routed by `optax.multi_transform`
to a transformation that ignores their gradients: they get no optimizer state, take no part
in clipping or weight decay, stay bit-identical, and XLA drops their unused weight gradients.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from experiments.training import global_norm
from experiments.training.config_utils import ConfigError, check_keys

# No decay on biases, norm scales, position embeddings, class tokens and loss temperatures.
DEFAULT_WD_EXCLUDE = r"(bias|scale|.*pos_emb.*|.*cls.*|log_temp|logit_bias)$"

_COMMON_DEFAULTS: dict[str, Any] = dict(
    warmup_steps=0,
    schedule="cosine",
    end_lr_factor=0.0,
    weight_decay=0.0,
    wd_exclude=DEFAULT_WD_EXCLUDE,
    grad_clip_norm=None,
    freeze=(),
)
_OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "adamw": dict(b1=0.9, b2=0.999, eps=1e-8, mu_dtype=None),
    "sgd": dict(momentum=0.0, nesterov=False),
}
_REQUIRED = ("name", "lr", "total_steps")
_SCHEDULES = ("cosine", "linear", "constant")
_TRAINABLE, _FROZEN = "trainable", "frozen"


def _flatten_with_paths(tree: Any) -> list[tuple[str, Any]]:
    """[(path, leaf)] with boxed (nn.LogicallyPartitioned) leaves unboxed first."""
    tree = nn.meta.unbox(tree)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(p, simple=True, separator="/"), leaf) for p, leaf in flat]


def _map_with_paths(fn: Any, tree: Any) -> Any:
    """Maps fn(path, leaf) over a tree of arrays or ShapeDtypeStructs, keeping any boxes
    (nn.LogicallyPartitioned) so the result has the same structure as `tree`."""

    def leaf_fn(key_path: Any, leaf: Any) -> Any:
        path = jax.tree_util.keystr(key_path, simple=True, separator="/")
        if isinstance(leaf, nn.meta.AxisMetadata):
            return leaf.replace_boxed(fn(path, leaf.unbox()))
        return fn(path, leaf)

    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return jax.tree_util.tree_map_with_path(leaf_fn, tree, is_leaf=is_box)


def param_paths(params: Any) -> list[str]:
    """The "/"-joined path of every parameter, in tree order."""
    return [path for path, _ in _flatten_with_paths(params)]


def freeze_patterns(config: Any) -> tuple[str, ...]:
    """The optimizer config's `freeze` field as a tuple of regexes (a lone string allowed)."""
    patterns = config.get("freeze", ()) or ()
    if isinstance(patterns, str):
        patterns = (patterns,)
    if not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"optim.freeze must be a sequence of regex strings, got {patterns!r}")
    return tuple(patterns)


def _is_frozen(path: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, path) for p in patterns)


def frozen_mask(params: Any, patterns: Sequence[str]) -> Any:
    """A pytree of bools like the (unboxed) params: True where a `freeze` regex fullmatches."""
    return _map_with_paths(lambda path, _: _is_frozen(path, patterns), nn.meta.unbox(params))


def check_freeze_patterns(params: Any, patterns: Sequence[str]) -> None:
    """Raises ConfigError for a freeze regex that matches no parameter (a typo, usually)."""
    paths = param_paths(params)
    for pattern in patterns:
        if not any(re.fullmatch(pattern, path) for path in paths):
            examples = paths[:3] + (["..."] if len(paths) > 4 else []) + paths[-1:]
            raise ConfigError(
                f"optim.freeze regex {pattern!r} matches no parameter (it must fullmatch a "
                f"'/'-joined path). Example paths: {examples}"
            )


def parameter_counts(params: Any, patterns: Sequence[str] = ()) -> tuple[int, int]:
    """(all, trainable) scalar parameter counts; trainable ones match no freeze regex.
    Accepts arrays or ShapeDtypeStructs, boxed or not."""
    total = trainable = 0
    for path, leaf in _flatten_with_paths(params):
        size = math.prod(leaf.shape)
        total += size
        trainable += 0 if _is_frozen(path, patterns) else size
    return total, trainable


def trainable_leaves(tree: Any, patterns: Sequence[str] = ()) -> list[Any]:
    """The (unboxed) leaves not matched by a freeze regex, in tree order."""
    return [x for path, x in _flatten_with_paths(tree) if not _is_frozen(path, patterns)]


def trainable_global_norm(tree: Any, patterns: Sequence[str] = (), layout: Any = None) -> jax.Array:
    """L2 norm over the leaves not matched by a freeze regex: the grad norm worth logging.

    `layout`: the abstract params with their shardings, so that like leaves are reduced
    together without moving data (`experiments.training.global_norm`)."""
    hint = None if layout is None else trainable_leaves(layout, patterns)
    return global_norm.norm_of_leaves(trainable_leaves(tree, patterns), hint)


def make_schedule(config: Any) -> optax.Schedule:
    """Learning rate per step: linear warmup 0 -> lr, then cosine/linear decay or constant.

    With W = warmup_steps, T = total_steps, e = lr * end_lr_factor and progress
    t = clip((step - W) / (T - W), 0, 1): step < W gives lr * step / W; after that cosine gives
    e + (lr - e) * (1 + cos(pi t)) / 2, linear gives lr + (e - lr) t, constant gives lr.
    """
    lr = float(config["lr"])
    warmup = int(config.get("warmup_steps", 0) or 0)
    total = int(config["total_steps"])
    kind = config.get("schedule", "cosine")
    end = lr * float(config.get("end_lr_factor", 0.0))
    if kind not in _SCHEDULES:
        raise ConfigError(f"Unknown schedule {kind!r}; valid: {list(_SCHEDULES)}")
    if not 0 <= warmup <= total or total <= 0:
        raise ConfigError(
            f"optim.warmup_steps={warmup} must lie in [0, total_steps={total}] (the schedule "
            "spans config.total_steps): shorten the warmup or lengthen the run."
        )

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
        if kind == "cosine":
            decayed = end + (lr - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        elif kind == "linear":
            decayed = lr + (end - lr) * progress
        else:
            decayed = jnp.full_like(progress, lr)
        return jnp.where(step < warmup, lr * step / max(warmup, 1), decayed)

    return schedule


def _constant_lr(config: Any) -> float | None:
    """The learning rate when the schedule is a constant (no warmup), else None.

    optax then scales by a plain number instead of evaluating the schedule on a step count
    that it keeps in the optimizer state; XLA copies that scalar computation into every
    parameter's update fusion (~2,300 of a ViT-S/16 CLIP step's 38,000 HLO instructions)."""
    warmup = int(config.get("warmup_steps", 0) or 0)
    if config.get("schedule", "cosine") == "constant" and warmup == 0:
        return float(config["lr"])
    return None


def _keep_fixed() -> optax.GradientTransformation:
    """optax.set_to_zero, but with -0.0 updates: p + (-0.0) == p bit-for-bit for every p
    (p + 0.0 would turn a -0.0 parameter into +0.0). Stateless, so frozen params cost no
    optimizer memory."""

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        return jax.tree.map(lambda u: jnp.full_like(u, -0.0), updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def check_config(config: Any) -> dict[str, Any]:
    """Checks an optimizer config without building anything; returns its defaults.

    Raises ConfigError for a missing required field, an unknown optimizer, schedule or key,
    or a warmup longer than the schedule."""
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ConfigError(f"optim is missing required field(s) {missing}")
    name = config["name"]
    if name not in _OPTIMIZER_DEFAULTS:
        raise ConfigError(f"Unknown optimizer {name!r}; valid: {sorted(_OPTIMIZER_DEFAULTS)}")
    defaults = {**_COMMON_DEFAULTS, **_OPTIMIZER_DEFAULTS[name]}
    check_keys(config, set(_REQUIRED) | set(defaults), "optim")
    make_schedule(config)  # checks the schedule's fields; builds nothing compiled
    return defaults


def make_optimizer(config: Any, params: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer described by `config` (see the module docstring) for `params`.

    Args:
      config: the optimizer ConfigDict (or dict). Unknown keys raise ConfigError.
      params: the parameter tree (arrays or jax.ShapeDtypeStructs, boxed or not); used to
        check the freeze regexes. The transformation recomputes its masks from whatever tree
        it is given, so `jax.eval_shape(tx.init, abstract_params)` works.

    Returns:
      (tx, schedule): the optax transformation and the lr schedule (step -> lr) for logging.
    """
    defaults = check_config(config)
    name = config["name"]
    get = lambda key: config.get(key, defaults[key])

    schedule = make_schedule(config)
    patterns = freeze_patterns(config)
    check_freeze_patterns(params, patterns)
    wd_exclude = get("wd_exclude")

    def decay_mask(tree: Any) -> Any:
        return _map_with_paths(
            lambda path, _: not (wd_exclude and re.search(wd_exclude, path)), tree
        )

    parts = []
    if get("grad_clip_norm"):
        # Inside the trainable branch: frozen leaves are masked out before the norm is taken.
        layout = trainable_leaves(params, patterns)
        parts.append(global_norm.clip_by_global_norm(float(get("grad_clip_norm")), layout))
    if name == "adamw":
        parts.append(
            optax.scale_by_adam(get("b1"), get("b2"), get("eps"), mu_dtype=get("mu_dtype"))
        )
    elif get("momentum"):
        parts.append(optax.trace(decay=float(get("momentum")), nesterov=bool(get("nesterov"))))
    if get("weight_decay"):
        # Before the lr scaling, as in optax.adamw: the decay follows the schedule.
        parts.append(optax.add_decayed_weights(float(get("weight_decay")), mask=decay_mask))
    constant_lr = _constant_lr(config)
    parts.append(optax.scale_by_learning_rate(schedule if constant_lr is None else constant_lr))
    tx = optax.chain(*parts)

    if patterns:
        labels = lambda tree: _map_with_paths(
            lambda path, _: _FROZEN if _is_frozen(path, patterns) else _TRAINABLE, tree
        )
        tx = optax.multi_transform({_TRAINABLE: tx, _FROZEN: _keep_fixed()}, labels)
    return tx, schedule
