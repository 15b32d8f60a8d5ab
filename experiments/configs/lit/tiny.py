r"""Tiny LiT: the image tower of an earlier run, locked; only the text tower learns.

First train the tiny CLIP (`make demo`, or experiments/configs/clip/tiny.py), then

    python -m experiments.train \
        --config experiments/configs/lit/tiny.py:init=workdirs/clip_tiny_demo \
        --workdir workdirs/lit_tiny

`init` is the workdir (or its checkpoints/ folder) of the run whose image tower is loaded;
the towers must have the same shapes as clip/tiny's. The optimizer freezes every `img/...`
parameter (bit-identical after training) and the analytic FLOPs count the locked tower as
forward-only. Measured (2-core CPU, 300 steps, 2.5 min, from the `make demo` run): zero-shot
top-1 19.4% (chance 4.2%), top-5 76.2%; retrieval R@1 t2i 31.9% / i2t 25.8% (chance 0.7%),
close to the source run's 20.4% / 34.3% with a text tower trained from scratch.
"""

from experiments import config_utils
from experiments.configs import common


def get_config(arg=None):
    arg = config_utils.parse_arg(
        arg, init="workdirs/clip_tiny_demo", steps=300, batch=128, lr=1e-3, loss="softmax"
    )
    config = common.base(total_steps=arg.steps, batch_size=arg.batch)
    config.objective = "contrastive"
    image, text = common.tiny_towers()
    config.model = dict(image=image, text=text, loss=arg.loss, loss_impl="sharded")
    config.init = dict(checkpoint=arg.init, step=None, load=("img",))
    config.data = common.shapes_data(image_size=48, max_len=16)
    config.optim = common.adamw(
        lr=arg.lr,
        total_steps=arg.steps,
        warmup_steps=max(1, arg.steps // 10),
        weight_decay=0.1,
        freeze=("img/.*",),
    )
    config.checkpoint.every_steps = max(1, arg.steps // 2)
    config.evals = common.shapes_evals(every_steps=0, batch_size=256)
    return config
