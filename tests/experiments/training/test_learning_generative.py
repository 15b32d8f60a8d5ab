"""Learning: a tiny SimVLM learns to caption and to answer on held-out data, well above the
best constant caption and the majority answer (the full runs are in the README)."""

import pytest

from experiments.training import config_utils, trainer


def _config(data_dir, name, task, steps, source):
    config = config_utils.load_config(
        "experiments/configs/simvlm/tiny.py",
        [
            f"total_steps={steps}",
            "optim.warmup_steps=20",
            "batch_size=32",
            "log_every_steps=100",
            "optim.lr=2e-3",
        ],
    )
    config.unlock()
    config.data.update(
        name=name,
        data_dir=data_dir,
        image_size=32,
        max_len=24,
        task=task,
        mix=(),
        source=source,
        augment=False,
    )
    config.model.image.update(width=64, mlp_dim=256)
    config.model.decoder.update(width=64, mlp_dim=256)
    config.model.encoder.mlp_dim = 256
    config.checkpoint.update(every_steps=steps, async_save=False)
    shared = dict(data=name, split="test", batch_size=64, max_examples=128)
    if task == "vqa":
        config.evals = {"vqa": dict(type="vqa", max_new_tokens=4, **shared)}
    else:
        config.evals = {
            "captioning": dict(type="captioning", max_new_tokens=24, contact_sheet=0, **shared)
        }
    return config


@pytest.mark.slow
def test_tiny_simvlm_captions_beat_the_best_constant_caption(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    source = dict(image_size=32, train_size=2048, test_size=128)
    config = _config(data_dir, "vlax_shapes", "prefix_lm", 400, source)
    out = trainer.train(config, str(tmp_path_factory.mktemp("cap")))["results"]["captioning"]
    assert out["num_examples"] == 128
    assert out["cider"] >= 2 * out["chance_cider"], out


@pytest.mark.slow
def test_tiny_simvlm_answers_beat_the_majority_answer(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    source = dict(image_size=32, train_size=1024, test_size=64, questions_per_scene=3)
    config = _config(data_dir, "vlax_shapes_vqa", "vqa", 400, source)
    out = trainer.train(config, str(tmp_path_factory.mktemp("vqa")))["results"]["vqa"]
    assert out["accuracy"] >= 2 * out["chance_accuracy"], out
