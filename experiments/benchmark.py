r"""Measure a config's train step: compile time, step time, throughput, TFLOP/s, MFU, memory.

    python -m experiments.benchmark --config experiments/configs/clip/tiny.py
    python -m experiments.benchmark --config experiments/configs/clip/b16.py \
        --config.batch_size=16 --json workdirs/bench_b16.json

Runs the trainer's own jitted step (same sharding, donation and optimizer) on synthetic
batches of the config's shapes, so no dataset is needed. MFU divides the analytic model
FLOPs by the device peak: `config.peak_flops_per_device`, else the datasheet value of a known
accelerator, else (CPU) a measured f32 matmul peak. Prints one JSON object and optionally
writes it to --json.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from experiments.training import host_memory  # noqa: E402

if __name__ == "__main__":  # before JAX starts; may re-execute with tcmalloc preloaded
    host_memory.use_fast_allocator()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import objectives  # noqa: E402
from experiments.tools.step_timing import benchmark, decode_benchmark  # noqa: E402
from experiments.training import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after the warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this file.")
_DECODE = flags.DEFINE_list(
    "decode_batch_sizes", ["1", "8"], "Generative objectives: batch sizes to time decoding at."
)
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "Generative objectives: new tokens.")
_DECODE_ONLY = flags.DEFINE_bool(
    "decode_only", False, "Generative objectives: time decoding only, not the train step."
)
flags.mark_flags_as_required(["config"])


def main():
    generative = callable(
        getattr(objectives.get_objective(_CONFIG.value.objective), "generate", None)
    )
    if _DECODE_ONLY.value and not generative:
        raise app.UsageError(
            f"--decode_only: objective {_CONFIG.value.objective!r} does not generate"
        )
    results = (
        {}
        if _DECODE_ONLY.value
        else benchmark(_CONFIG.value, steps=_STEPS.value, warmup=_WARMUP.value)
    )
    if generative:
        results["decoding"] = decode_benchmark(
            _CONFIG.value,
            batch_sizes=tuple(int(b) for b in _DECODE.value),
            new_tokens=_NEW_TOKENS.value,
        )
    text = json.dumps(results, indent=1)
    print(text)
    if _JSON.value:
        os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
        with open(_JSON.value, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    cli.run(main)
