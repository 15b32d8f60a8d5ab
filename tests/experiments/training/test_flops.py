"""experiments/training/flops.py: device peak table, measured CPU peak, MFU arithmetic."""

from typing import NamedTuple

import jax
import numpy as np
import pytest

from experiments.training import flops


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


def test_throughput_figures():
    # 8e12 FLOPs in 2 s on 4 devices = 1e12 FLOP/s per device; peak 4e12 -> 25%.
    out = flops.throughput(8e12, 2.0, 64, 4, 4e12)
    assert out == {
        "step_time_s": 2.0,
        "examples_per_sec": 32.0,
        "tflops_per_device": pytest.approx(1.0),
        "mfu": pytest.approx(0.25),
    }
    assert "mfu" not in flops.throughput(8e12, 2.0, 64, 4, None)
    with pytest.raises(ValueError, match="positive"):
        flops.mfu(8e12, 0.0, 4, 4e12)


def test_cpu_peak_is_the_measured_host_peak_shared_by_its_devices(monkeypatch):
    measured = []

    def fake_measure(dtype, n, repeats):
        measured.append(jax.numpy.dtype(dtype).name)
        return 8e11 if measured[-1] == "float32" else 1.6e12

    monkeypatch.setattr(flops, "measure_matmul_peak", fake_measure)
    flops._measured_cpu_peak.cache_clear()
    assert flops.peak_flops_per_device() == 8e11 / jax.local_device_count()
    assert flops.peak_flops_per_device(dtype="bfloat16") == 1.6e12 / jax.local_device_count()
    assert flops.peak_flops_per_device() == 8e11 / jax.local_device_count()
    assert measured == ["float32", "bfloat16"]  # measured once per dtype, then reused
    assert flops.peak_flops_per_device(123e12) == 123e12
    flops._measured_cpu_peak.cache_clear()


def test_effective_peak_weighs_each_dtype_by_its_share(monkeypatch):
    peaks = {"float32": 1e12, "bfloat16": 2e12}
    monkeypatch.setattr(flops, "peak_flops_per_device", lambda override, dtype: peaks[dtype])
    # 1e12 f32 FLOPs take 1 s at peak and 2e12 bf16 FLOPs another 1 s: 3e12 in 2 s.
    assert flops.effective_peak({"float32": 1e12, "bfloat16": 2e12}) == pytest.approx(1.5e12)
    assert flops.effective_peak({"bfloat16": 5.0}) == 2e12
    assert flops.effective_peak({"float32": 1.0}, override=7.0) == 7.0
    peaks["bfloat16"] = None
    assert flops.effective_peak({"float32": 1.0, "bfloat16": 1.0}) is None
