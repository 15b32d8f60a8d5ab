"""Analytic FLOPs of the towers, device peaks, and model FLOPs utilisation (MFU).

Counting rules (the usual ones, e.g. PaLM's appendix B and MaxText): a multiply-add is 2 FLOPs;
only matmuls count (norms, softmax, activations are a few % at real widths); attention counts
the full L x L score matrix, causal or not. Per transformer layer over L tokens of width D:

    projections   2 * L * 4 * D^2           (q, k, v, out)
    attention     2 * 2 * L^2 * D           (q k^T and probs v)
    mlp           2 * L * 2 * D * mlp_dim   (3 matrices instead of 2 for a gated/GLU MLP)

Training costs 3x the forward (the backward computes activation and weight gradients, each
about one forward); see `train_flops` for frozen towers. MFU = model FLOPs per second /
(devices x peak): rematerialisation is not counted, so MFU is what the model needs, not
what the hardware did.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def dense_flops(tokens: int, d_in: int, d_out: int) -> float:
    """A [tokens, d_in] x [d_in, d_out] matmul."""
    return 2.0 * tokens * d_in * d_out


def attention_block_flops(q_len: int, kv_len: int, width: int) -> float:
    """Multi-head attention of q_len queries over kv_len keys (any head split of `width`):
    q and out projections on the queries, k and v projections on the keys, q k^T, probs v."""
    projections = dense_flops(q_len, width, width) * 2 + dense_flops(kv_len, width, width) * 2
    return projections + 2.0 * 2.0 * q_len * kv_len * width


def mlp_flops(tokens: int, width: int, mlp_dim: int, *, glu: bool = False) -> float:
    """Two matmuls D -> mlp_dim -> D per token; a gated (GLU/SwiGLU) MLP has a third."""
    return dense_flops(tokens, width, mlp_dim) * (3 if glu else 2)


def transformer_flops_per_example(
    *, seq_len: int, width: int, depth: int, mlp_dim: int, glu: bool = False
) -> float:
    """Forward FLOPs of `depth` self-attention + MLP layers over one [seq_len, width] sequence."""
    layer = attention_block_flops(seq_len, seq_len, width) + mlp_flops(
        seq_len, width, mlp_dim, glu=glu
    )
    return depth * layer


def map_head_flops(seq_len: int, width: int, mlp_dim: int) -> float:
    """Multihead attention pooling: one learned probe attends over seq_len tokens, then an MLP."""
    return attention_block_flops(1, seq_len, width) + mlp_flops(1, width, mlp_dim)


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def vit_forward_flops(
    image_size: int | Sequence[int],
    patch_size: int | Sequence[int],
    width: int,
    depth: int,
    mlp_dim: int,
    num_classes: int | None = None,
    pool_type: str = "gap",
    channels: int = 3,
) -> float:
    """Forward FLOPs of a ViT on one [H, W, channels] image.

    Patch embedding (N = H/p * W/p patches of p*p*channels values) + encoder over N tokens
    (N + 1 with a class token, pool_type="tok") + MAP head (pool_type="map") + a linear head
    of `num_classes` outputs (per pooled vector; per token for pool_type="none").
    """
    if pool_type not in ("gap", "tok", "map", "none"):
        raise ValueError(f"Unknown pool_type {pool_type!r}; valid: gap, tok, map, none")
    (h, w), (ph, pw) = _pair(image_size), _pair(patch_size)
    if h % ph or w % pw:
        raise ValueError(f"image_size {(h, w)} is not a multiple of patch_size {(ph, pw)}")
    patches = (h // ph) * (w // pw)
    seq_len = patches + (1 if pool_type == "tok" else 0)
    flops = dense_flops(patches, ph * pw * channels, width)
    flops += transformer_flops_per_example(
        seq_len=seq_len, width=width, depth=depth, mlp_dim=mlp_dim
    )
    if pool_type == "map":
        flops += map_head_flops(seq_len, width, mlp_dim)
    if num_classes:
        flops += dense_flops(seq_len if pool_type == "none" else 1, width, num_classes)
    return flops


def text_forward_flops(
    seq_len: int,
    width: int,
    depth: int,
    mlp_dim: int,
    num_classes: int | None = None,
    *,
    vocab_size: int | None = None,
    glu: bool = False,
) -> float:
    """Forward FLOPs of a text transformer on one sequence of seq_len tokens.

    The token embedding is a gather (0 FLOPs). `num_classes`: a linear head on the pooled
    vector (e.g. the CLIP projection). `vocab_size`: per-token logits of a language model.
    """
    flops = transformer_flops_per_example(
        seq_len=seq_len, width=width, depth=depth, mlp_dim=mlp_dim, glu=glu
    )
    if num_classes:
        flops += dense_flops(1, width, num_classes)
    if vocab_size:
        flops += dense_flops(seq_len, width, vocab_size)
    return flops


def train_flops(forward: float, *, frozen: bool = False, backprop_through: bool = False) -> float:
    """FLOPs of one training step of a tower, given its forward FLOPs.

    Trainable: 3x (forward + activation gradients + weight gradients). A frozen tower has no
    weight gradients: 1x when it sits at the input end and no gradient flows through it (LiT's
    locked image tower), 2x when gradients must pass through it to trainable parts before it
    (a frozen LM fed by a trainable vision encoder, as in Frozen). An approximation: with
    trainable pieces inside a frozen tower (Flamingo's gated cross-attention) count those
    pieces separately as trainable.
    """
    if not frozen:
        return 3.0 * forward
    return (2.0 if backprop_through else 1.0) * forward


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


def tflops_per_device(flops_per_step: float, step_time_s: float, num_devices: int) -> float:
    """Achieved model TFLOP/s per device."""
    return flops_per_step / step_time_s / num_devices / 1e12


def mfu(
    flops_per_step: float, step_time_s: float, num_devices: int, peak_per_device: float
) -> float:
    """Model FLOPs utilisation in [0, 1]: achieved FLOP/s over `num_devices * peak_per_device`.

    `flops_per_step` is the whole global batch's training FLOPs (see `train_flops`).
    """
    if step_time_s <= 0 or num_devices <= 0 or peak_per_device <= 0:
        raise ValueError(
            f"Need positive step_time_s, num_devices, peak_per_device; got "
            f"{step_time_s}, {num_devices}, {peak_per_device}"
        )
    return flops_per_step / step_time_s / (num_devices * peak_per_device)
