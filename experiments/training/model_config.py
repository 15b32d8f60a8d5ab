"""The objective's constructor arguments (`config.model`), checked and completed.

`check_model_keys` needs only the objective class: every key of `config.model` must be one
of its fields, and every tower group in its `CONFIG_MODULES` one of that module's fields.
`complete` runs once the data is bound: the precision policy sets every tower's dtypes
(precision_policy.py), the image size must tile into patches, and the objective fills the
data-dependent fields (vocabulary size, special ids, lengths) from the tokenizer through its
own `fill_data_fields`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax.core import FrozenDict

from experiments.training import config_utils, precision_policy
from experiments.training.config_utils import ConfigError, module_fields
from models import vit as vit_lib


def check_model_keys(objective_cls: type, cfg: Mapping[str, Any]) -> None:
    """Unknown `config.model.*` keys fail with the allowed ones, before anything is built.

    Nested groups are checked against the module class the objective declares for them in
    `CONFIG_MODULES` (e.g. {"image": ViT, "text": TextTransformer}).
    """
    config_utils.check_keys(cfg, module_fields(objective_cls), "config.model")
    for key, module_cls in getattr(objective_cls, "CONFIG_MODULES", {}).items():
        if cfg.get(key) is not None:
            config_utils.check_keys(
                config_utils.plain(cfg[key]), module_fields(module_cls), f"config.model.{key}"
            )


def complete(
    objective_cls: type, model_config, data_fields: Mapping[str, Any], precision: str = "fp32"
) -> dict[str, Any]:
    """The objective's kwargs: checked, with the `precision` policy on every tower, the
    data-dependent fields filled (`data_fields`: inputs.Inputs.model_fields()) and nested
    dicts frozen."""
    cfg = config_utils.plain(model_config)
    check_model_keys(objective_cls, cfg)
    cfg = precision_policy.apply(objective_cls, cfg, precision)
    image = config_utils.plain(cfg.get("image") or {})
    if image:
        # Checked here so a wrong size fails before anything compiles.
        patch = vit_lib.ViT(**image, parent=None).config()["patch_size"]
        if data_fields["image_size"] % patch:
            raise ConfigError(
                f"config.data.image_size={data_fields['image_size']} is not a multiple of the "
                f"image tower's patch size {patch} (config.model.image.variant/patch_size)."
            )
    try:
        cfg = objective_cls.fill_data_fields(cfg, data_fields)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {k: FrozenDict(v) if isinstance(v, dict) else v for k, v in cfg.items()}
