"""The loss-memory table: ring losses need per-device memory of the local batch only."""

import jax
import pytest

from experiments.tools import loss_memory


def test_ring_losses_use_a_fraction_of_the_gathered_memory():
    batch, dim = 2048, 16
    rows = {r["variant"]: r for r in loss_memory.loss_memory(batch, dim)}
    assert list(rows) == [label for label, _, _ in loss_memory.VARIANTS]
    b = batch // jax.device_count()
    gathered = rows["all-gather softmax"]["temp_bytes"]
    assert gathered >= 4 * b * batch  # at least one [b, B] f32 logit block
    for name in ("ring softmax", "ring sigmoid"):
        temp = rows[name]["temp_bytes"]
        assert 0 < temp < gathered / 3, (name, temp, gathered)
        assert temp <= 8 * 4 * b * b, (name, temp)  # a few [b, b] blocks, never [b, B]
    table = loss_memory.markdown(list(rows.values()), batch, dim, jax.device_count())
    assert table.count("\n| ") == 6  # header, rule, four variants


def test_batch_must_divide_over_the_devices():
    with pytest.raises(ValueError, match="batch 1001 is not divisible by the 8 devices"):
        loss_memory.loss_memory(1001, 8)
