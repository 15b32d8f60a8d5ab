"""Shared fixtures: a tiny built-in dataset prepared once, and tiny trainer configs."""

import pytest

from experiments.configs import common

TINY_SOURCE = dict(image_size=32, train_size=256, test_size=64)


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
    """A data_dir holding a tiny prepared vlax_shapes (and, after first use, its tokenizer)."""
    from data import sources

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    sources.get_source("vlax_shapes", "train", data_dir=data_dir, **TINY_SOURCE)
    return data_dir


def tiny_config(data_dir, *, loss="softmax", steps=3, batch=16, mesh=None):
    """A CLIP config small enough to compile and run a step in a second or two."""
    config = common.base(total_steps=steps, batch_size=batch)
    config.objective = "contrastive"
    tower = dict(width=32, depth=1, mlp_dim=64, num_heads=2, num_classes=16)
    config.model = dict(
        image=dict(tower, patch_size=8, pool_type="gap"),
        text=dict(tower, causal=True, pool_type="eos"),
        loss=loss,
        loss_impl="sharded",
    )
    config.data = common.shapes_data(image_size=32, max_len=8, vocab_size=64)
    config.data.data_dir = data_dir
    config.data.source = dict(TINY_SOURCE)
    config.data.augment = False
    config.optim = dict(
        name="adamw",
        lr=1e-3,
        warmup_steps=1,
        weight_decay=0.1,
        grad_clip_norm=1.0,
    )
    config.checkpoint = dict(every_steps=2, keep=3, async_save=False)
    config.log_every_steps = 1
    config.evals = {}
    if mesh is not None:
        config.mesh = mesh
    return config


@pytest.fixture
def make_config(shapes_data_dir):
    return lambda **kw: tiny_config(shapes_data_dir, **kw)
