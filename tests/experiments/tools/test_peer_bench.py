"""The peer-benchmark child speaks the harness's protocol (../shared/peers/README.md)."""

import json

import pytest

from experiments.tools import peer_bench

TINY_SPEC = {
    "name": "tiny",
    "batch": 8,
    "embed_dim": 16,
    "image": {"size": 32, "patch": 16, "width": 32, "depth": 1, "heads": 2, "mlp": 64},
    "text": {"context": 8, "vocab": 64, "width": 32, "depth": 1, "heads": 2, "mlp": 64},
    "optimizer": {
        "name": "adamw",
        "lr": 1e-4,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "weight_decay": 1e-4,
    },
}
PROTOCOL_KEYS = {
    "kind", "peer", "shape", "loss_name", "batch", "loss_first", "loss_last", "compile_s",
    "first_step_s", "step_times_s", "step_median_s", "step_min_s", "step_max_s",
    "examples_per_s", "flops_per_step",
}  # fmt: skip


@pytest.mark.parametrize(
    "loss, precision, layers, peer",
    [
        ("clip", "fp32", "scan", "vlax"),
        ("siglip", "bf16", "scan", "vlax-bf16"),
        ("clip", "fp32", "unrolled", "vlax-unrolled"),
    ],
)
def test_child_prints_one_protocol_line(capsys, loss, precision, layers, peer):
    peer_bench.main(
        [
            "--shape=tiny",
            f"--loss={loss}",
            "--steps=2",
            "--warmup=1",
            f"--precision={precision}",
            f"--layers={layers}",
            "--spec-json=" + json.dumps(TINY_SPEC),
        ]
    )
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert line.startswith(peer_bench.RESULT_TAG)
    result = json.loads(line[len(peer_bench.RESULT_TAG) :])
    assert set(result) >= PROTOCOL_KEYS
    assert result["kind"] == "step" and result["shape"] == "tiny" and result["batch"] == 8
    assert result["loss_name"] == loss and len(result["step_times_s"]) == 2
    assert result["peer"] == peer and result["config"]["layers"] == layers
    assert result["flops_per_step"] > 0 and result["step_median_s"] > 0


def test_config_has_the_harness_shapes_and_optimizer():
    config = peer_bench.peer_config(TINY_SPEC, "siglip", steps=3)
    image, text = config.model.image, config.model.text
    assert (image.width, image.depth, image.num_heads, image.mlp_dim) == (32, 1, 2, 64)
    assert (text.vocab_size, text.max_len, text.causal, text.pool_type) == (64, 8, False, "last")
    assert image.num_classes == text.num_classes == 16
    assert (config.model.loss, config.model.temperature_init, config.model.bias_init) == (
        "sigmoid",
        10.0,
        -10.0,
    )
    assert config.optim.schedule == "constant" and not config.optim.grad_clip_norm
    assert image.scan and text.scan  # the default layer layout; "unrolled" turns it off
    unrolled = peer_bench.peer_config(TINY_SPEC, "clip", steps=3, layers="unrolled").model
    assert not unrolled.image.scan and not unrolled.text.scan
    assert (config.optim.b2, config.optim.eps, config.optim.warmup_steps) == (0.999, 1e-8, 0)
    with pytest.raises(
        ValueError, match=r"--precision must be one of \[.bf16., .bf16_act., .fp32.\]"
    ):
        peer_bench.peer_config(TINY_SPEC, "clip", steps=3, precision="fp16")
    with pytest.raises(ValueError, match="--layers must be one of"):
        peer_bench.peer_config(TINY_SPEC, "clip", steps=3, layers="rolled")
