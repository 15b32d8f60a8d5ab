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
    return ConfigDict(
        dict(
            seed=seed,
            total_steps=total_steps,
            batch_size=batch_size,
            log_every_steps=50,
            mesh=(("data", -1), ("fsdp", 1), ("tensor", 1)),
            mesh_dcn=(),
            sharding_rules=sharding.DEFAULT_RULES,
            checkpoint=dict(every_steps=500, keep=2, async_save=True),
            peak_flops_per_device=None,  # None: known accelerator table, or measured on CPU
        )
    )


def shapes_data(
    *,
    image_size: int = 64,
    max_len: int = 16,
    vocab_size: int = 128,
    train_size: int = 20000,
    test_size: int = 2000,
    render_size: int = 64,
) -> ConfigDict:
    """The built-in synthetic shapes dataset (generated into data_dir on first use).

    Images are rendered once at `render_size` and resized to `image_size` by the pipeline,
    so configs of different resolutions share one prepared dataset.
    """
    return ConfigDict(
        dict(
            name="vlax_shapes",
            train_split="train",
            data_dir="data_cache",
            image_size=image_size,
            max_len=max_len,
            augment=True,
            prefetch=2,
            tokenizer=dict(model="", vocab_size=vocab_size),
            source=dict(image_size=render_size, train_size=train_size, test_size=test_size),
        )
    )


def shapes_evals(*, every_steps: int, batch_size: int) -> ConfigDict:
    """Zero-shot over the 24 "colour shape" classes and retrieval, on the held-out split."""
    return ConfigDict(
        dict(
            zero_shot=dict(
                type="zero_shot",
                every_steps=every_steps,
                data="vlax_shapes",
                split="test",
                batch_size=batch_size,
            ),
            retrieval=dict(
                type="retrieval",
                every_steps=every_steps,
                data="vlax_shapes",
                split="test",
                batch_size=batch_size,
                max_examples=1000,
            ),
        )
    )


def adamw(
    *,
    lr: float,
    total_steps: int,
    warmup_steps: int,
    weight_decay: float,
    b2: float = 0.98,
    eps: float = 1e-6,
    freeze: tuple[str, ...] = (),
) -> ConfigDict:
    """AdamW with linear warmup, cosine decay and global-norm clipping at 1."""
    optim = dict(
        name="adamw",
        lr=lr,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        schedule="cosine",
        b1=0.9,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        grad_clip_norm=1.0,
    )
    if freeze:
        optim["freeze"] = tuple(freeze)
    return ConfigDict(optim)


def tfds_data(
    *, name: str, data_dir: str, tokenizer: str, image_size: int, max_len: int, vocab_size: int
) -> ConfigDict:
    """A prepared tfds image-text dataset (array_record under data_dir), for pod configs."""
    data = shapes_data(image_size=image_size, max_len=max_len, vocab_size=vocab_size)
    data.name = name
    data.data_dir = data_dir
    data.source = {}
    data.tokenizer.model = tokenizer
    return data


def data_and_evals(
    name: str, *, image_size: int, max_len: int, vocab_size: int, every_steps: int, eval_batch: int
) -> tuple[ConfigDict, ConfigDict]:
    """Data + evals for the tiny configs: the built-in shapes, or a user's own pairs.

    `name` "vlax_shapes" gives zero-shot + retrieval on its test split. "user:/path" (a CSV,
    JSONL or folder of image-caption pairs) trains on the first 95% and evaluates retrieval
    on the last 5%; unreadable images are skipped and counted (`source.strict=True`: error).
    """
    if name == "vlax_shapes":
        return (
            shapes_data(image_size=image_size, max_len=max_len, vocab_size=vocab_size),
            shapes_evals(every_steps=every_steps, batch_size=eval_batch),
        )
    data = shapes_data(image_size=image_size, max_len=max_len, vocab_size=vocab_size)
    data.name = name
    data.train_split = "train[:95%]"
    data.source = dict(strict=False) if name.startswith("user:") else {}
    evals = ConfigDict(
        dict(
            retrieval=dict(
                type="retrieval",
                every_steps=every_steps,
                data=name,
                split="train[95%:]",
                batch_size=eval_batch,
            )
        )
    )
    return data, evals


def tiny_towers(*, out_dim: int = 96) -> tuple[dict, dict]:
    """A ViT and a text transformer that train in minutes on 2 CPU cores (36 patches of
    48 px images, 16 tokens; ~14 GFLOP per step at batch 128)."""
    image = dict(
        width=96,
        depth=3,
        mlp_dim=384,
        num_heads=4,
        patch_size=8,
        posemb="learn",
        pool_type="gap",
        num_classes=out_dim,
    )
    text = dict(
        width=96,
        depth=3,
        mlp_dim=384,
        num_heads=4,
        causal=True,
        pool_type="eos",
        num_classes=out_dim,
    )
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
    config.data = shapes_data(
        image_size=64, max_len=16, vocab_size=128, train_size=512, test_size=128
    )
    config.evals = shapes_evals(every_steps=0, batch_size=64)
