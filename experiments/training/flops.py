"""Device peaks, measured CPU peak, achieved TFLOP/s and model FLOPs utilisation (MFU).

The model side (analytic FLOPs per example of each tower) lives in `models.flops`. MFU =
model FLOPs per second / (devices x peak): rematerialisation is not counted, so MFU is what
the model needs, not what the hardware did.
"""

from __future__ import annotations

import functools
import math
import re
import time

import jax
import jax.numpy as jnp

# Dense (no sparsity) peak FLOP/s per JAX device, from vendor datasheets, as (regex on the
# lowercased device_kind, bf16 peak, f32 peak at JAX's default matmul precision). At default
# precision TPUs run f32 matmuls as one bf16 pass and A100/H100 as TF32. Ordered: the first
# matching regex wins ("tpu v5 lite" before "tpu v5").
_PEAKS: tuple[tuple[str, float, float], ...] = (
    (r"tpu v6", 918e12, 918e12),  # v6e (Trillium): "TPU v6 lite"
    (r"tpu v5 ?(lite|e)", 197e12, 197e12),  # v5e: "TPU v5 lite"
    (r"tpu v5", 459e12, 459e12),  # v5p: "TPU v5" / "TPU v5p"
    (r"tpu v4", 275e12, 275e12),
    (r"h100.*pcie", 756e12, 378e12),
    (r"h100|h200|gh200", 989e12, 494.5e12),  # SXM parts
    (r"a100", 312e12, 156e12),
)


def device_peak_flops(device: jax.Device | None = None, dtype: str = "float32") -> float | None:
    """Peak matmul FLOP/s of one device for `dtype` inputs, or None where it is not known.

    None for CPUs (the peak depends on the host: use `measure_matmul_peak`), unknown devices,
    and float32 when `jax_default_matmul_precision` asks for more than the default (f32 then
    runs at a fraction of the table's rate).
    """
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return None
    dtype = jnp.dtype(dtype).name
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"No peak table for dtype {dtype!r}")
    precision = jax.config.jax_default_matmul_precision
    if dtype == "float32" and precision not in (None, "default", "DEFAULT"):
        return None
    kind = device.device_kind.lower()
    for pattern, low_precision_peak, f32_peak in _PEAKS:
        if re.search(pattern, kind):
            return f32_peak if dtype == "float32" else low_precision_peak
    return None


def measure_matmul_peak(dtype: jnp.dtype = jnp.float32, n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a jitted [n, n] x [n, n] matmul on the default device.

    The best of `repeats` timed calls after a warm-up (compile) call. Accumulates in f32
    (`preferred_element_type`), the fast path for bf16 inputs on CPU. On a CPU host forced to
    show several devices, they share the same cores: this is the whole host's peak.
    """
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def mfu(
    flops_per_step: float, step_time_s: float, num_devices: int, peak_per_device: float
) -> float:
    """Model FLOPs utilisation in [0, 1]: achieved FLOP/s over `num_devices * peak_per_device`.

    `flops_per_step` is the whole global batch's training FLOPs.
    """
    if step_time_s <= 0 or num_devices <= 0 or peak_per_device <= 0:
        raise ValueError(
            f"Need positive step_time_s, num_devices, peak_per_device; got "
            f"{step_time_s}, {num_devices}, {peak_per_device}"
        )
    return flops_per_step / step_time_s / (num_devices * peak_per_device)


def throughput(
    flops_per_step: float,
    step_time_s: float,
    batch_size: int,
    num_devices: int,
    peak_per_device: float | None,
) -> dict[str, float]:
    """The figures every train log line and the benchmark report for one step time."""
    out = {
        "step_time_s": step_time_s,
        "examples_per_sec": batch_size / step_time_s,
        "tflops_per_device": flops_per_step / step_time_s / num_devices / 1e12,
    }
    if peak_per_device:
        out["mfu"] = mfu(flops_per_step, step_time_s, num_devices, peak_per_device)
    return out


@functools.cache
def _measured_cpu_peak(dtype: str) -> float:
    # Forced host devices (tests, --xla_force_host_platform_device_count) share the cores.
    return measure_matmul_peak(jnp.dtype(dtype), n=2048, repeats=5) / jax.local_device_count()


def peak_flops_per_device(override: float | None = None, dtype: str = "float32") -> float | None:
    """The per-device peak for `dtype` matmul inputs: `override` if given, the datasheet table
    for known accelerators, else (CPU) the measured host matmul peak shared by its devices."""
    if override:
        return float(override)
    device = jax.devices()[0]
    peak = device_peak_flops(device, dtype)
    if peak is None and device.platform == "cpu":
        peak = _measured_cpu_peak(jnp.dtype(dtype).name)
    return peak


def effective_peak(flops_by_dtype: dict[str, float], override: float | None = None) -> float | None:
    """The peak that the model's mix of matmul dtypes could reach: total FLOPs over the time
    each dtype's share takes at its own peak (a bf16 tower and an f32 tower each count at
    their rate). None when a dtype's peak is unknown."""
    if override:
        return float(override)
    total = sum(flops_by_dtype.values())
    time_at_peak = 0.0
    for dtype, count in flops_by_dtype.items():
        peak = peak_flops_per_device(None, dtype)
        if peak is None:
            return None
        time_at_peak += count / peak
    return total / time_at_peak if time_at_peak else None
