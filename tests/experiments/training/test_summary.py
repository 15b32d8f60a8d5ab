"""The end-of-run summary prints each metric beside its chance level."""

from experiments.training import summary


def test_metrics_are_printed_next_to_chance():
    text = summary.format_results(
        {"zero_shot": {"top1": 0.25, "chance_top1": 0.05, "num_examples": 100.0}}, "/tmp/w"
    )
    assert "top1           0.2500   (chance 0.0500, 5.0x)" in text
    assert "num_examples   100.0000" in text and "chance_top1" not in text
    assert "tensorboard --logdir /tmp/w" in text
