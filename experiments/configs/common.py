"""Pieces shared by the configs: run defaults, data, evals, optimizer, tower sizes.

Config files import this as `from experiments.configs import common` (run from the repo
root). Every helper returns a fresh ConfigDict (or dict), so configs never share mutable state
and a config reads as one short function.
"""

import copy

import ml_collections

from data import shapes
from experiments.training import sharding

ConfigDict = ml_collections.ConfigDict
NUM_SHAPES_CLASSES = len(shapes.CLASS_NAMES)


def base(
    *, total_steps: int, batch_size: int, seed: int = 0, fsdp: int = 1, tensor: int = 1
) -> ConfigDict:
    """Fields every experiment has; data parallel over the devices fsdp/tensor leave."""
    return ConfigDict(
        dict(
            seed=seed,
            total_steps=total_steps,
            batch_size=batch_size,
            log_every_steps=50,
            mesh=(("data", -1), ("fsdp", fsdp), ("tensor", tensor)),
            mesh_dcn=(),
            parallelism=sharding.DEFAULT_PRESET,  # "dp" | "fsdp" | "fsdp_tp": sharding.PRESETS
            sharding_rules=(),  # explicit logical-axis rules override the preset
            sharding_strict=False,  # True: a rule a dimension cannot honour is an error
            checkpoint=dict(every_steps=500, keep=2, async_save=True, allow_resume_changes=()),
            peak_flops_per_device=0.0,  # 0: known accelerator table, or measured on CPU
            # "fp32" | "bf16_mixed" (bf16 matmul inputs, f32 accumulation and activations)
            # | "bf16_act" (bf16 activations too): models/precision.py
            precision="fp32",
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
            num_threads=0,  # input threads; 0: min(16, CPU count)
            mean=0.5,
            std=0.5,
            tokenizer=dict(model="", vocab_size=vocab_size, canonicalize=False, lowercase=False),
            source=dict(image_size=render_size, train_size=train_size, test_size=test_size),
        )
    )


def tfds_data(
    *,
    name: str,
    data_dir: str,
    tokenizer: str,
    image_size: int,
    max_len: int,
    vocab_size: int,
    mean=0.5,
    std=0.5,
) -> ConfigDict:
    """A prepared tfds image-text dataset (array_record under data_dir), for pod configs."""
    return ConfigDict(
        dict(
            name=name,
            train_split="train",
            data_dir=data_dir,
            image_size=image_size,
            max_len=max_len,
            augment=True,
            prefetch=2,
            num_threads=0,
            mean=mean,
            std=std,
            tokenizer=dict(
                model=tokenizer, vocab_size=vocab_size, canonicalize=False, lowercase=False
            ),
            source={},
        )
    )


def shapes_evals(*, every_steps: int, batch_size: int) -> ConfigDict:
    """On the held-out split: zero-shot over the 24 "colour shape" classes, retrieval and
    hard-negative caption accuracy."""
    common = dict(every_steps=every_steps, data="vlax_shapes", split="test", batch_size=batch_size)
    return ConfigDict(
        dict(
            zero_shot=dict(type="zero_shot", **common),
            # The synthetic captions repeat (~250 distinct in 1000): equal texts are one caption.
            retrieval=dict(
                type="retrieval", max_examples=1000, group_identical_captions=True, **common
            ),
            hard_negatives=dict(type="hard_negatives", max_examples=1000, **common),
        )
    )


def data_and_evals(
    name: str, *, image_size: int, max_len: int, vocab_size: int, every_steps: int, eval_batch: int
) -> tuple[ConfigDict, ConfigDict]:
    """Data + evals for the tiny configs: the built-in shapes, or a user's own pairs.

    `name` "vlax_shapes" gives `shapes_evals`. "user:/path" (a CSV, JSONL or folder of
    image-caption pairs) trains on its "train" split and evaluates retrieval on its "test"
    split (a `split` column, else a stable pseudo-random 5% by image path; see data.sources).
    """
    data = shapes_data(image_size=image_size, max_len=max_len, vocab_size=vocab_size)
    if name == "vlax_shapes":
        return data, shapes_evals(every_steps=every_steps, batch_size=eval_batch)
    data.name = name
    data.source = dict(strict=False) if name.startswith("user:") else {}
    retrieval = dict(
        type="retrieval", every_steps=every_steps, data=name, split="test", batch_size=eval_batch
    )
    return data, ConfigDict(dict(retrieval=retrieval))


def adamw(
    *,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    b2: float = 0.98,
    eps: float = 1e-6,
    freeze: tuple[str, ...] = (),
) -> ConfigDict:
    """AdamW with linear warmup, cosine decay and global-norm clipping at 1. The schedule
    spans config.total_steps (the trainer fills optim.total_steps from it)."""
    return ConfigDict(
        dict(
            name="adamw",
            lr=lr,
            warmup_steps=warmup_steps,
            schedule="cosine",
            b1=0.9,
            b2=b2,
            eps=eps,
            weight_decay=weight_decay,
            grad_clip_norm=1.0,
            freeze=tuple(freeze),
        )
    )


def tiny_towers(style: str = "clip", *, out_dim: int = 96) -> tuple[dict, dict]:
    """A ViT and a text transformer that train in minutes on 2 CPU cores (36 patches of
    48 px images, 32 tokens; ~19 GFLOP per step at batch 128), in the layout of an exact
    transformers class so a run exports with `--format hf`:

    "clip": CLIPModel (cls pooling over a learned table, ln_pre, quick-GELU, eps 1e-5,
      bias-free patch embedding and projections; causal EOS-pooled text).
    "siglip": SiglipModel (MAP-head pooling, no image projection, tanh-GELU; bidirectional
      text pooled at the final position with padding attended, biased projection).
    """
    shared = dict(width=96, depth=3, mlp_dim=384, num_heads=4)
    if style == "clip":
        common = dict(
            shared, activation="quick_gelu", norm_eps=1e-5, head_bias=False, num_classes=out_dim
        )
        image = dict(
            common, patch_size=8, posemb="learn", pool_type="cls", ln_pre=True, patch_bias=False
        )
        text = dict(common, causal=True, pool_type="eos")
    elif style == "siglip":
        common = dict(shared, activation="gelu_tanh")
        image = dict(common, patch_size=8, posemb="learn", pool_type="map")
        text = dict(
            common, causal=False, pool_type="final", mask_padding=False, num_classes=shared["width"]
        )
    else:
        raise ValueError(f"style must be 'clip' or 'siglip', got {style!r}")
    return image, text


def tiny_contrastive(
    *, data: str, steps: int, batch: int, lr: float, style: str = "clip", **model
) -> ConfigDict:
    """The whole tiny contrastive experiment (clip/siglip tiny); `model` holds the loss
    fields (loss, temperature_init, bias_init, ...), `style` the towers (`tiny_towers`)."""
    config = base(total_steps=steps, batch_size=batch)
    config.objective = "contrastive"
    image, text = tiny_towers(style)
    config.model = dict(image=image, text=text, **model)
    config.data, config.evals = data_and_evals(
        data, image_size=48, max_len=32, vocab_size=128, every_steps=0, eval_batch=256
    )
    # SigLIP canonicalises text (as transformers' SiglipTokenizer does).
    config.data.tokenizer.canonicalize = style == "siglip"
    config.optim = adamw(lr=lr, warmup_steps=max(1, steps // 10), weight_decay=0.1)
    config.checkpoint.every_steps = max(1, steps // 2)
    return config


def cpu_sized(config: ConfigDict) -> ConfigDict:
    """A copy of a paper-scale config that runs on a CPU in about a minute: the same model
    *structure* (pooling, norms, loss), micro-sized towers, the built-in data, 10 steps."""
    small = copy.deepcopy(config)
    micro = dict(width=32, depth=2, mlp_dim=64, num_heads=2, remat=False)
    for name in ("image", "text"):
        tower = {k: v for k, v in config.model[name].items() if k != "variant"}
        tower.update(micro, num_classes=32)
        small.model[name] = tower
    small.model.image.patch_size = 16
    small.model.text.vocab_size = 128
    steps = 10
    small.update(
        mesh=(("data", -1), ("fsdp", 1), ("tensor", 1)),
        batch_size=16,
        total_steps=steps,
        log_every_steps=2,
    )
    # Whole groups are replaced, not merged field by field (their field types differ).
    del small["data"], small["evals"]
    small.data = shapes_data(
        image_size=64, max_len=16, vocab_size=128, train_size=512, test_size=128
    )
    small.evals = shapes_evals(every_steps=0, batch_size=64)
    small.optim.update(warmup_steps=2)
    small.checkpoint.every_steps = 5
    return small
