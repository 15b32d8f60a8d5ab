"""training/inputs.py and model_config.py: model config checks and completion from the data,
truncation warnings."""

import pytest

from experiments.training import config_utils, inputs, model_config
from objectives.contrastive import TwoTower
from tests.experiments.conftest import tiny_config


@pytest.fixture
def data(shapes_data_dir):
    config = tiny_config(shapes_data_dir)
    return inputs.Inputs(config.data, global_batch_size=16, seed=0)


def test_text_tower_fields_come_from_the_tokenizer(data):
    cfg = model_config.complete(
        TwoTower, {"image": {"patch_size": 8}, "text": {"width": 32}}, data.model_fields()
    )
    tok = data.tokenizer
    assert dict(cfg["text"]) == {
        "width": 32,
        "vocab_size": tok.vocab_size,
        "max_len": 8,
        "pad_id": tok.pad_id,
        "eos_id": tok.eos_id,
    }


@pytest.mark.parametrize(
    "model, message",
    [
        ({"image": {"patch_size": 5}}, r"image_size=32 is not a multiple of .* patch size 5"),
        ({"text": {"vocab_size": 8}}, r"text.vocab_size=8 is smaller than the tokenizer's"),
        ({"image": {"widht": 32}}, r"config.model.image.widht \(did you mean 'width'\?\)"),
        ({"text": {"pool": "eos"}}, r"config.model.text.pool .*Valid keys: \["),
        ({"los": "softmax"}, r"config.model.los \(did you mean 'loss'\?\)"),
    ],
)
def test_model_config_errors_name_the_field(data, model, message):
    with pytest.raises(config_utils.ConfigError, match=message):
        model_config.complete(TwoTower, model, data.model_fields())


def test_truncated_captions_are_counted_and_warned(shapes_data_dir, caplog):
    config = tiny_config(shapes_data_dir).data
    config.max_len = 4  # shapes captions are 4-12 words
    with caplog.at_level("WARNING"):
        inputs.Inputs(config, global_batch_size=16, seed=0)
    assert "longer than config.data.max_len=4 tokens and will be cut" in caplog.text
    assert "would fit 95% of them" in caplog.text
