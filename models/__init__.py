"""Flax Linen encoders and layers. Configs name models through `get_model_class`."""

import importlib

import flax.linen as nn

# Short names for the common towers; any other "module.Class" under models/ also resolves.
_ALIASES = {
    "vit": "vit.ViT",
    "text": "text.TextTransformer",
}


def get_model_class(name: str) -> type[nn.Module]:
    """Resolves "vit", "text" or "<module>.<Class>" (e.g. "vit.ViT") to a Module class.

    Raises:
      ValueError: the name does not resolve to an `nn.Module` subclass under models/.
    """
    target = _ALIASES.get(name, name)
    module_name, _, class_name = target.rpartition(".")
    if not module_name:
        raise ValueError(
            f"Unknown model {name!r}: use one of {sorted(_ALIASES)} or '<module>.<Class>'."
        )
    try:
        module = importlib.import_module(f"models.{module_name}")
    except ModuleNotFoundError as e:
        if e.name != f"models.{module_name}":
            raise  # a real import error inside an existing module
        raise ValueError(f"Unknown model {name!r}: no module models.{module_name}.") from e
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"models.{target} is not a flax.linen Module.")
    return cls
