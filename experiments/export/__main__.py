r"""Export a vlax run to Hugging Face transformers or plain PyTorch.

    python -m experiments.export --workdir workdirs/clip_tiny_demo --format hf --out exports/clip
    python -m experiments.export --workdir DIR --step 250 --format torch --out OUT [--overwrite]

`--format hf` writes the exact transformers class (CLIPModel or SiglipModel) that
`from_pretrained(OUT)` loads without vlax; `--format torch` writes the repo's plain PyTorch
modules (experiments/export/torch_models, `torch_models.load(OUT)`) for any two-tower or
PrefixLM (SimVLM) model.
Everything is checked before the checkpoint is read; the output appears only when complete.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

from experiments.export import export_run  # noqa: E402
from experiments.training import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (holds checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_FORMAT = flags.DEFINE_enum("format", None, export_run.FORMATS, "Target format.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an output directory with files.")
flags.mark_flags_as_required(["workdir", "format", "out"])


def main():
    summary = export_run.export_run(
        _WORKDIR.value, _FORMAT.value, _OUT.value, step=_STEP.value, overwrite=_OVERWRITE.value
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    cli.run(main)
