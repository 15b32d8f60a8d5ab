r"""Tiny LiT: the image tower of an earlier run, locked; only the text tower learns.

First train the tiny CLIP (`make demo`, or experiments/configs/clip/tiny.py), then

    python -m experiments.train \
        --config experiments/configs/lit/tiny.py:init=workdirs/clip_tiny_demo \
        --workdir workdirs/lit_tiny

`init` is the workdir (or its checkpoints/ folder) of the run whose image tower is loaded;
the towers must have the same shapes as clip/tiny's. The optimizer freezes every `img/...`
parameter (bit-identical after training) and the analytic FLOPs count the locked tower as
forward-only. Measured (2026-12-02, 2-core AVX-512 CPU shared with other jobs, 300 steps,
2 min 19 s for the command, from the `make demo` run): zero-shot top-1 27.6% (chance 4.2%),
top-5 79.9%; retrieval R@1 t2i 55.7% / i2t 47.1% (chance 0.6%); hard negatives 87.6%;
close to the source run's 27.4% / 57.5% with a text tower trained from scratch.
"""

from ml_collections import config_dict

from experiments.configs import common
from experiments.training import config_utils


def get_config(arg=None):
    arg = config_utils.parse_arg(
        arg, init="workdirs/clip_tiny_demo", steps=300, batch=128, lr=1e-3, loss="softmax"
    )
    config = common.tiny_contrastive(
        data="vlax_shapes",
        steps=arg.steps,
        batch=arg.batch,
        lr=arg.lr,
        loss=arg.loss,
        loss_impl="sharded",
    )
    # step: a placeholder (int or None) so `--config.init.step=N` can pick one; None = latest.
    config.init = dict(checkpoint=arg.init, step=config_dict.placeholder(int), load=("img",))
    config.optim.freeze = ("img/.*",)
    return config
