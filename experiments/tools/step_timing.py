"""The step and decoding timers behind `experiments.benchmark` (and the peer-harness child).

No command-line flags here, so any module may import it.
"""

import resource
import statistics
import time

import flax.linen as nn
import jax
import numpy as np

from data import tokenizer as tokenizer_lib
from experiments.training import flops, host_memory, sharding, trainer


def synthetic_batch(layout: dict, vocab_size: int, seed: int = 0) -> dict:
    """Random images and EOS-terminated token rows (random prefix lengths for generative
    tasks) shaped like `layout`, a data.dummy_batch."""
    rng = np.random.default_rng(seed)
    batch = dict(layout)
    batch["image"] = rng.standard_normal(layout["image"].shape, dtype=np.float32)
    batch_size, length = layout["tokens"].shape
    tokens = rng.integers(4, vocab_size, (batch_size, length), dtype=np.int32)
    tokens[:, -1] = tokenizer_lib.EOS_ID
    batch["tokens"] = tokens
    if "prefix_len" in layout:
        batch["prefix_len"] = rng.integers(0, length - 1, (batch_size,), dtype=np.int32)
    return batch


def _vocab_size(model_config: dict) -> int:
    for tower in ("text", "decoder"):
        if tower in model_config and model_config[tower].get("vocab_size"):
            return int(model_config[tower]["vocab_size"])
    return 32000


def benchmark(config, *, steps: int = 5, warmup: int = 2) -> dict:
    """Builds the trainer's step for `config` and times it. Returns the figures as a dict."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    s = trainer.setup(config, need_data=False)
    # Each process feeds its slice of the global batch.
    local = synthetic_batch(
        s.inputs.dummy_batch(config.batch_size // jax.process_count()),
        _vocab_size(s.meta["model_config"]),
        seed=jax.process_index(),
    )
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        batch = sharding.to_global_batch(local, s.mesh)
        state = s.fresh_state()
        t0 = time.perf_counter()
        compiled = s.step_fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        all_times, losses = [], []
        for _ in range(warmup + steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            all_times.append(time.perf_counter() - t0)
            losses.append(float(metrics["loss"]))
    times = all_times[warmup:]
    first_step_s = all_times[0]  # includes one-off costs (allocation)
    step_s = statistics.median(times)
    n_dev = jax.device_count()
    peak = flops.effective_peak(s.flops_by_dtype, config.get("peak_flops_per_device"))
    figures = flops.throughput(s.flops_per_step, step_s, config.batch_size, n_dev, peak)
    mem = compiled.memory_analysis()
    device_bytes = None
    if mem is not None:
        device_bytes = int(
            mem.temp_size_in_bytes
            + mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
        )
    return {
        "devices": n_dev,
        "device_kind": jax.devices()[0].device_kind,
        "batch_size": int(config.batch_size),
        "compile_s": round(compile_s, 3),
        "step_s": round(step_s, 4),
        "step_s_min": round(min(times), 4),
        "step_times_s": [round(t, 4) for t in times],
        "first_step_s": round(first_step_s, 4),
        "examples_per_s": round(figures["examples_per_sec"], 2),
        "flops_per_step": s.flops_per_step,
        "matmul_dtypes": sorted(s.flops_by_dtype),
        "tflops_per_device": round(figures["tflops_per_device"], 4),
        "peak_tflops_per_device": round(peak / 1e12, 4) if peak else None,
        "mfu": round(figures["mfu"], 4) if peak else None,
        "step_memory_bytes_per_device": device_bytes,
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "host_allocator": host_memory.active_allocator(),
        "loss": losses[-1],
        "loss_first": losses[0],
    }


def decode_benchmark(config, *, batch_sizes=(1, 8), new_tokens: int = 32, repeats: int = 3):
    """Greedy decoding throughput with the KV cache and without (the plain reference that
    re-runs the decoder over the whole sequence per token), for an objective with `generate`.

    Per batch size and path: `tokens_per_s` (new tokens per second of a whole `generate`
    call: encoder, prefill and the decode loop), `prefill_s` (a call making one token) and
    `step_ms` (the decode loop's cost per further token: the difference of the two over
    new_tokens - 1). EOS is disabled so every run makes exactly `new_tokens` tokens (random
    weights would otherwise stop at random lengths)."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 (prefill + decode steps), got {new_tokens}")
    s = trainer.setup(config, need_data=False)
    model = s.model.clone(eos_id=-1)
    params = s.fresh_state()["params"]
    size, length = s.inputs.image_size, s.inputs.max_len

    def seconds(fn, args):
        jax.block_until_ready(fn(params, *args))  # compile + warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, *args))
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    out = {"new_tokens": new_tokens}
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        for use_cache in (True, False):
            fns = {
                n: jax.jit(
                    lambda p, i, t, k, n=n, c=use_cache: model.apply(
                        {"params": p},
                        i,
                        t,
                        k,
                        method="generate",
                        max_new_tokens=n,
                        decode="greedy",
                        use_cache=c,
                    )
                )
                for n in (1, new_tokens)
            }
            for b in batch_sizes:
                args = (
                    np.zeros((b, size, size, 3), np.float32),
                    np.zeros((b, length), np.int32),
                    np.zeros((b,), np.int32),
                )
                whole, prefill = seconds(fns[new_tokens], args), seconds(fns[1], args)
                key = f"{'cached' if use_cache else 'uncached'}_batch{b}"
                out[f"{key}_tokens_per_s"] = round(b * new_tokens / whole, 1)
                out[f"{key}_prefill_s"] = round(prefill, 4)
                out[f"{key}_step_ms"] = round(1e3 * (whole - prefill) / (new_tokens - 1), 2)
    for b in batch_sizes:
        cached, uncached = f"cached_batch{b}", f"uncached_batch{b}"
        out[f"cache_speedup_batch{b}"] = round(
            out[f"{cached}_tokens_per_s"] / out[f"{uncached}_tokens_per_s"], 2
        )
        out[f"cache_step_speedup_batch{b}"] = round(
            out[f"{uncached}_step_ms"] / max(out[f"{cached}_step_ms"], 1e-6), 2
        )
    return out
