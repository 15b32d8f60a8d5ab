"""experiments/flops.py: device peak table, measured CPU peak, MFU arithmetic."""

from typing import NamedTuple

import jax
import numpy as np
import pytest

from experiments import flops


class _FakeDevice(NamedTuple):
    platform: str
    device_kind: str


@pytest.mark.parametrize(
    "kind, dtype, expected",
    [
        ("TPU v4", "bfloat16", 275e12),
        ("TPU v5 lite", "bfloat16", 197e12),
        ("TPU v5", "bfloat16", 459e12),
        ("TPU v5p", "bfloat16", 459e12),
        ("TPU v6 lite", "bfloat16", 918e12),
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
        ("NVIDIA H200", "bfloat16", 989e12),
        ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12),
        ("NVIDIA A100-SXM4-40GB", "float32", 156e12),
        ("TPU v4", "float32", 275e12),
        ("Some future chip", "bfloat16", None),
    ],
)
def test_device_peak_table(kind, dtype, expected):
    platform = "tpu" if kind.startswith("TPU") else "gpu"
    with jax.default_matmul_precision("default"):
        assert flops.device_peak_flops(_FakeDevice(platform, kind), dtype) == expected


def test_device_peak_unknown_cases():
    assert flops.device_peak_flops() is None  # The CPU: measure instead.
    # conftest asks for "highest" f32 matmuls: the f32 table no longer applies.
    assert flops.device_peak_flops(_FakeDevice("gpu", "NVIDIA H100"), "float32") is None
    with pytest.raises(ValueError, match="int8"):
        flops.device_peak_flops(_FakeDevice("gpu", "NVIDIA H100"), "int8")


def test_measure_matmul_peak_is_plausible():
    peak = flops.measure_matmul_peak(n=256, repeats=3)
    assert np.isfinite(peak) and 1e8 < peak < 1e14


def test_mfu_and_tflops_arithmetic():
    # 8e12 FLOPs in 2 s on 4 devices = 1e12 FLOP/s per device; peak 4e12 -> 25%.
    assert flops.mfu(8e12, 2.0, 4, 4e12) == pytest.approx(0.25)
    assert flops.tflops_per_device(8e12, 2.0, 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        flops.mfu(8e12, 0.0, 4, 4e12)


def test_peak_override_and_cpu_share():
    assert flops.peak_flops_per_device(123e12) == 123e12
    cpu = flops.peak_flops_per_device()
    # Measured on the host and split over its (8 forced) devices.
    assert cpu is not None and 1e7 < cpu < 1e13
