r"""Train (or resume) an experiment config.

    python -m experiments.train --config experiments/configs/clip/tiny.py[:key=value,...] \
        --workdir workdirs/clip_tiny [--config.total_steps=100 ...]

Rerunning with the same --workdir resumes from its latest checkpoint.
"""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from experiments.training import host_memory  # noqa: E402

if __name__ == "__main__":  # before JAX starts; may re-execute with tcmalloc preloaded
    host_memory.use_fast_allocator()

import jax  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments.training import cli, summary, trainer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Multi-host run: call jax.distributed.initialize() (auto-detects TPU pods, SLURM, ...).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host without a cluster manager: host:port of process 0."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging.Filter):
    """Keeps our INFO lines (metrics, evals, ETA) and the libraries' warnings only."""

    NOISY = ("/orbax/", "/tensorflow_datasets/", "/jax/", "/etils/", "/grain/")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(
            part in record.pathname for part in self.NOISY
        )


def main():
    if _COORDINATOR.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _MULTIHOST.value:
        jax.distributed.initialize()
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    out = trainer.train(_CONFIG.value, _WORKDIR.value)
    if jax.process_index() == 0:
        print(summary.format_results(out["results"], _WORKDIR.value))


if __name__ == "__main__":
    cli.run(main)
