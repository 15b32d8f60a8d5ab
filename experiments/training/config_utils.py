"""Config loading and validation: configs are code, and mistakes in them fail before compiling.

A config file is `experiments/configs/<family>/<name>.py` defining `get_config(arg=None)`.
`arg` is a short `key=value,...` string for common variants, decoded by `parse_arg`:

    def get_config(arg=None):
        arg = config_utils.parse_arg(arg, variant="B/16", res=224, runlocal=False)
        ...

Launch: `--config experiments/configs/clip/base.py:variant=S/16,runlocal` and any field can
be overridden afterwards (`--config.total_steps=100`); `load_config` does the same in code.

Every unknown name fails loudly with the valid names and a "did you mean" suggestion: a typo
in a config key must never silently fall back to a default after hours of compiling.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from etils import epath
from ml_collections import config_flags


class ConfigError(ValueError):
    """A config names something that does not exist or is malformed."""


def suggest(name: str, valid: Iterable[str]) -> str:
    """Returns ' (did you mean 'x'?)' for the closest valid name, or '' when none is close."""
    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _parse_literal(text: str) -> Any:
    """'224' -> 224, '1e-3' -> 0.001, 'true' -> True, '(1, 2)' -> (1, 2), 'B/16' -> 'B/16'."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def _coerce(text: str, like: Any, name: str) -> Any:
    """Parses `text` into the type of the existing value `like` (free inference if None)."""
    value = _parse_literal(text)
    if like is None or value is None:
        return value
    if isinstance(like, bool):  # Before int: bool is an int subclass.
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
    elif isinstance(like, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(like, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(like, str):
        return text.strip()  # Keep the text verbatim: '16' stays '16' for a str field.
    elif isinstance(like, tuple | list):
        if isinstance(value, tuple | list):
            return type(like)(value)
        return type(like)([value])
    else:
        return value
    raise ConfigError(f"{name}={text!r}: cannot parse as {type(like).__name__} (default {like!r})")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Decodes a config's `key=value,...` argument string on top of `defaults`.

    Values take the type of their default (a None default infers int/float/bool/str from the
    text); a bare `key` means `key=True`.

    E.g. parse_arg("variant=B/16,res=224,scan", variant="S/16", res=32, scan=False) gives
    ConfigDict(variant="B/16", res=224, scan=True).

    Raises:
      ConfigError: a key not in `defaults` (the message lists the valid keys), or a value that
        does not parse as its default's type.
    """
    result = dict(defaults)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"Unknown config argument {key!r}{suggest(key, defaults)}; "
                f"valid keys: {sorted(defaults)}"
            )
        if not sep and not isinstance(defaults[key], bool | None):
            raise ConfigError(f"Config argument {key!r} needs a value ({key}=...)")
        result[key] = _coerce(text, defaults[key], key) if sep else True
    return ml_collections.ConfigDict(result)


def load_config(config_arg: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config exactly as the entry points' `--config` flag does (ml_collections).

    Args:
      config_arg: `"path/to/config.py"` or `"path/to/config.py:key=value,..."` (the text after
        ':' goes to `get_config`).
      overrides: `["total_steps=100", "optim.lr=0.1"]`, applied like `--config.<name>=<value>`
        (unknown names and unparsable values are errors).

    Raises:
      ConfigError: a missing file, a bad argument or override (the message says which).
    """
    path = config_arg.partition(":")[0]
    if not epath.Path(path).is_file():
        raise ConfigError(f"Config file {path!r} does not exist")
    argv = ["vlax", f"--config={config_arg}", *(f"--config.{o}" for o in overrides)]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    try:
        flag_values(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{config_arg} with overrides {list(overrides)}: {e}") from e
    return flag_values.config


def plain(x: Any) -> Any:
    """A ConfigDict / FrozenDict / mapping as a plain (shallow) dict; anything else as is."""
    if hasattr(x, "to_dict"):
        return x.to_dict()
    return dict(x) if isinstance(x, Mapping) else x


def module_fields(cls: type) -> set[str]:
    """Constructor fields of a Linen module (a dataclass), without Linen's parent/name."""
    return {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name"}


def _keys(config: Any) -> list[str]:
    return list(config.keys())


def check_keys(config: Any, allowed: Iterable[str] | Mapping[str, Any], where: str) -> None:
    """Raises ConfigError if `config` has a key that `allowed` does not name.

    Args:
      config: a ConfigDict or dict.
      allowed: the valid key names; or a mapping from name to a nested schema, where the
        schema is None (any value) or again a set/mapping checked against that sub-config.
      where: where the config lives, for the message (e.g. "config.optim").
    """
    valid = set(allowed)
    unknown = [k for k in _keys(config) if k not in valid]
    if unknown:
        details = "; ".join(f"{where}.{k}{suggest(k, valid)}" for k in unknown)
        raise ConfigError(f"Unknown config key(s): {details}. Valid keys: {sorted(valid)}")
    if isinstance(allowed, Mapping):
        for key, schema in allowed.items():
            if schema is None or key not in config:
                continue
            value = config[key]
            if not hasattr(value, "keys"):
                raise ConfigError(f"{where}.{key} must be a group of fields, got {value!r}")
            check_keys(value, schema, f"{where}.{key}")
