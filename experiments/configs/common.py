"""Pieces shared by the configs: mesh/sharding defaults, the built-in data, the evals.

Config files import this as `from experiments.configs import common` (run from the repo
root). Each helper returns a fresh ConfigDict so configs never share mutable state.
"""

import ml_collections

from data import shapes
from experiments import sharding

ConfigDict = ml_collections.ConfigDict


def base(*, total_steps: int, batch_size: int, seed: int = 0) -> ConfigDict:
    """Fields every experiment has; data parallel over all devices by default."""
    return ConfigDict(dict(
        seed=seed,
        total_steps=total_steps,
        batch_size=batch_size,
        log_every_steps=50,
        mesh=(("data", -1), ("fsdp", 1), ("tensor", 1)),
        mesh_dcn=(),
        sharding_rules=sharding.DEFAULT_RULES,
        checkpoint=dict(every_steps=500, keep=2, async_save=True),
        peak_flops_per_device=None,  # None: known accelerator table, or measured on CPU
    ))


def shapes_data(*, image_size: int = 64, max_len: int = 16, vocab_size: int = 128,
                train_size: int = 20000, test_size: int = 2000) -> ConfigDict:
    """The built-in synthetic shapes dataset (generated into data_dir on first use)."""
    return ConfigDict(dict(
        name="vlax_shapes",
        train_split="train",
        data_dir="data_cache",
        image_size=image_size,
        max_len=max_len,
        augment=True,
        prefetch=2,
        tokenizer=dict(model="", vocab_size=vocab_size),
        source=dict(image_size=image_size, train_size=train_size, test_size=test_size),
    ))


def shapes_evals(*, every_steps: int, batch_size: int) -> ConfigDict:
    """Zero-shot over the 24 "colour shape" classes and retrieval, on the held-out split."""
    return ConfigDict(dict(
        zero_shot=dict(type="zero_shot", every_steps=every_steps, data="vlax_shapes",
                       split="test", batch_size=batch_size),
        retrieval=dict(type="retrieval", every_steps=every_steps, data="vlax_shapes",
                       split="test", batch_size=batch_size, max_examples=1000),
    ))


def tiny_towers(*, out_dim: int = 128) -> tuple[dict, dict]:
    """A ViT and a text transformer small enough to train in minutes on 2 CPU cores."""
    image = dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=8,
                 posemb="learn", pool_type="gap", num_classes=out_dim)
    text = dict(width=128, depth=4, mlp_dim=512, num_heads=4, causal=True,
                pool_type="eos", num_classes=out_dim)
    return image, text


NUM_SHAPES_CLASSES = len(shapes.CLASS_NAMES)


def make_runlocal(config: ConfigDict) -> None:
    """Shrinks a paper-scale config in place so it runs on a CPU in about a minute: same
    model *structure* (pooling, norms, loss), mu-sized towers, the built-in data."""
    for tower in (config.model.image, config.model.text):
        if "variant" in tower:
            del tower["variant"]
        tower.update(width=32, depth=2, mlp_dim=64, num_heads=2, remat=False)
        if "num_classes" in tower:
            tower.num_classes = 32
    config.model.image.patch_size = 16
    config.model.text.vocab_size = 128
    config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    config.batch_size = 16
    config.total_steps = 10
    config.optim.total_steps = 10
    config.optim.warmup_steps = 2
    config.log_every_steps = 2
    config.checkpoint.every_steps = 5
    config.data = shapes_data(image_size=64, max_len=16, vocab_size=128,
                              train_size=512, test_size=128)
    config.evals = shapes_evals(every_steps=0, batch_size=64)
