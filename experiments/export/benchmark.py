r"""Time the export of a config's model (random weights, fp32) from a real checkpoint.

    python -m experiments.export.benchmark --config experiments/configs/clip/b16.py

Initialises the config's model (shapes only need `config.model`; the text tower gets the
fixed special ids of vlax tokenizers), saves it as a checkpoint in a temporary workdir, then
times `export_run` for each format the model supports (checkpoint read + conversion + files).
Prints one JSON object.
"""

import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from data import tokenizer as tokenizer_lib  # noqa: E402
from experiments.export import export_run, output  # noqa: E402
from experiments.interop import hf_import  # noqa: E402
from experiments.training import checkpointing, run_meta  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
flags.mark_flags_as_required(["config"])


def _random_checkpoint(config, workdir: str) -> int:
    model_config = config.model.to_dict()
    text = model_config["text"]
    text.setdefault("max_len", config.data.max_len)
    text.setdefault("pad_id", tokenizer_lib.PAD_ID)
    text.setdefault("eos_id", tokenizer_lib.EOS_ID)
    size = config.data.image_size
    abstract = hf_import.abstract_params(model_config, size)
    keys = iter(jax.random.split(jax.random.key(0), 4096))
    params = jax.tree.map(
        lambda a: 0.02 * jax.random.normal(next(keys), a.shape, jnp.float32), abstract
    )
    meta = run_meta.make_meta(
        config,
        model_config=model_config,
        params=params,
        tokenizer=None,
        data={
            "name": config.data.name,
            "image_size": size,
            "max_len": text["max_len"],
            "mean": 0.5,
            "std": 0.5,
        },
    )
    ckpt = checkpointing.Checkpointer(workdir, save_every=1, keep=1, async_save=False)
    ckpt.save(1, {"params": params}, None, meta)
    ckpt.close()
    return sum(x.size for x in jax.tree.leaves(params))


def main(argv):
    del argv
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "run")
        results["n_params"] = _random_checkpoint(_CONFIG.value, workdir)
        for fmt in export_run.FORMATS:
            t0 = time.perf_counter()
            try:
                summary = export_run.export_run(workdir, fmt, os.path.join(tmp, fmt))
            except output.ExportError as e:
                results[fmt] = {"refused": str(e).splitlines()[0]}
                continue
            total = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in os.scandir(os.path.join(tmp, fmt)))
            results[fmt] = {"target": summary["target"], "seconds": round(total, 2), "bytes": size}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
