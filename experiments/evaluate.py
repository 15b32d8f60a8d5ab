r"""Evaluate a finished run, or a transformers checkpoint, with a config's evaluators.

    python -m experiments.evaluate --workdir workdirs/clip_tiny_demo [--step N]
    python -m experiments.evaluate --hf exports/clip_tiny \
        --config experiments/configs/clip/tiny.py [--config.evals.zero_shot.split=test]

`--workdir` rebuilds everything from the run's saved config and checkpoint. `--hf` imports a
CLIPModel / SiglipModel directory (towers, loss parameters and its tokenizer) into the
config's objective and runs the config's evaluators on it, with no training. Results are
printed and written to `<out>/eval_results.json` (default: the workdir, or `--out`).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from experiments.training import host_memory  # noqa: E402

if __name__ == "__main__":  # before JAX starts; may re-execute with tcmalloc preloaded
    host_memory.use_fast_allocator()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from clu import metric_writers  # noqa: E402
from etils import epath  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments.training import (  # noqa: E402
    checkpointing,
    cli,
    eval_runner,
    run_meta,
    summary,
    trainer,
)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config whose evals to run (--hf).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir to evaluate.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: latest).")
_HF = flags.DEFINE_string("hf", None, "A transformers CLIPModel/SiglipModel directory.")
_OUT = flags.DEFINE_string("out", None, "Where eval_results.json goes.")


def hf_config(config: ml_collections.ConfigDict, hf_dir: str) -> ml_collections.ConfigDict:
    """`config` with its towers, image size and tokenizer taken from a transformers dir."""
    from experiments.interop import hf_import

    model_config, _, image_size = hf_import.read_two_tower(hf_dir, params=False)
    config = ml_collections.ConfigDict(config.to_dict())
    for key in ("image", "text", "loss"):
        config.model[key] = model_config[key]
    config.data.image_size = image_size
    config.data.max_len = model_config["text"]["max_len"]
    src = epath.Path(hf_dir)
    if (src / "tokenizer.json").exists():
        config.data.tokenizer.model = str(src / "tokenizer.json")
    elif (src / "spiece.model").exists():
        tok = json.loads((src / "tokenizer_config.json").read_text())
        config.data.tokenizer.update(
            model=str(src / "spiece.model"),
            canonicalize=True,
            lowercase=bool(tok.get("do_lower_case", False)),
        )
    else:
        raise FileNotFoundError(f"{hf_dir} has no tokenizer.json or spiece.model")
    if "init" in config:
        del config["init"]  # the imported weights are the init
    return config


def evaluate(config, params_host, out: str, step: int = 0) -> dict:
    """Runs every evaluator of `config` on host params; writes <out>/eval_results.json under
    `step` (the checkpoint's step; 0 for imported weights, which had no training here)."""
    s = trainer.setup(config)
    params = jax.tree.map(
        lambda x, a: jax.device_put(x.astype(a.dtype), a.sharding), params_host, s.states.params
    )
    epath.Path(out).mkdir(parents=True, exist_ok=True)
    writer = metric_writers.create_default_writer(out, just_logging=True)
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        results, errors = eval_runner.run_evals(s, params, step, writer, out, final=True)
    if errors:
        raise eval_runner.EvaluationError(f"Evaluators failed: {errors}")
    return results


def main():
    if bool(_WORKDIR.value) == bool(_HF.value):
        raise app.UsageError("Give exactly one of --workdir or --hf.")
    if _WORKDIR.value:
        config = run_meta.load_run_config(_WORKDIR.value)
        meta, step = checkpointing.read_meta(_WORKDIR.value, _STEP.value)
        if meta.get("tokenizer"):  # the run's own tokenizer file, never a newly trained one
            config.data.tokenizer.model = meta["tokenizer"]["path"]
        params, _ = checkpointing.load_params(_WORKDIR.value, step)
        out = _OUT.value or _WORKDIR.value
    else:
        if _CONFIG.value is None:
            raise app.UsageError("--hf needs --config (whose evaluators and data to use).")
        from experiments.interop import hf_import

        config = hf_config(_CONFIG.value, _HF.value)
        params = hf_import.load_params(_HF.value)
        out = _OUT.value or os.path.join(_HF.value, "vlax_eval")
        step = 0
    results = evaluate(config, params, out, step)
    print(summary.format_results(results, out))


if __name__ == "__main__":
    cli.run(main)
