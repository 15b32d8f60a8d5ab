"""Learning: a tiny CLIP trained on the built-in shapes beats chance by a wide margin."""

import pytest

from experiments.configs import common
from experiments.training import trainer
from tests.experiments.conftest import tiny_config


@pytest.mark.slow
def test_tiny_clip_zero_shot_clears_3x_chance(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_learn"))
    config = tiny_config(data_dir, steps=300, batch=64)
    config.data.source = dict(image_size=32, train_size=4096, test_size=512)
    config.data.max_len = 16
    config.model.image.update(width=64, mlp_dim=256, depth=2, num_heads=4, patch_size=8)
    config.model.text.update(width=64, mlp_dim=256, depth=2, num_heads=4)
    config.model.image.num_classes = config.model.text.num_classes = 64
    config.optim = dict(
        name="adamw",
        lr=3e-3,
        warmup_steps=30,
        b2=0.98,
        weight_decay=0.1,
        grad_clip_norm=1.0,
    )
    config.checkpoint = dict(every_steps=300, keep=1, async_save=True)
    config.log_every_steps = 100
    config.evals = common.shapes_evals(every_steps=0, batch_size=64)
    results = trainer.train(config, str(tmp_path_factory.mktemp("learn")))["results"]
    zs, ret, hard = results["zero_shot"], results["retrieval"], results["hard_negatives"]
    assert zs["num_examples"] == 512
    # Held-out test split, 24 classes: chance is 1/24.
    assert zs["top1"] >= 3 * zs["chance_top1"], zs
    assert ret["t2i_r@1"] >= 3 * ret["chance_t2i_r@1"], ret
    # Attribute binding: measured 0.74 here; a model ignoring word order stays near 0.5.
    assert hard["accuracy"] >= 0.6, hard
