"""Checkpoint metadata: model signatures and the 'another model' check."""

import jax.numpy as jnp
import pytest

from experiments import checkpointing


def _params(width):
    return {"img": {"kernel": jnp.zeros((3, width))}, "log_temp": jnp.zeros(())}


def test_signature_lists_every_leaf():
    sig = checkpointing.param_signature(_params(4))
    assert sig == {"img/kernel": [[3, 4], "float32"], "log_temp": [[], "float32"]}


def test_same_model_is_compatible():
    meta = checkpointing.make_meta("contrastive", _params(4))
    checkpointing.check_compatible(meta, checkpointing.make_meta("contrastive", _params(4)), "w")


@pytest.mark.parametrize(
    "saved, message",
    [
        (checkpointing.make_meta("contrastive", _params(8)), r"img/kernel: checkpoint \[\[3, 8\]"),
        (checkpointing.make_meta("prefix_lm", _params(4)), "objective 'prefix_lm'"),
        (
            {**checkpointing.make_meta("contrastive", _params(4)), "format_version": 0},
            "format_version 0",
        ),
        (
            checkpointing.make_meta("contrastive", {"img": {"kernel": jnp.zeros((3, 4))}}),
            "1 parameters not in the checkpoint",
        ),
    ],
)
def test_another_model_is_refused_with_the_difference(saved, message):
    current = checkpointing.make_meta("contrastive", _params(4))
    with pytest.raises(checkpointing.CheckpointMismatchError, match=message):
        checkpointing.check_compatible(saved, current, "--workdir /x")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        checkpointing.load_params(str(tmp_path / "nowhere"))
    assert checkpointing.latest_step(str(tmp_path)) is None
