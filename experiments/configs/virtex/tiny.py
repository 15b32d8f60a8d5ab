r"""Tiny VirTex: captioning pretraining, i.e. the PrefixLM objective with an empty text prefix.

    python -m experiments.train --config experiments/configs/virtex/tiny.py \
        --workdir workdirs/virtex_tiny

Same model and data as simvlm/tiny, but every caption is a target from its first token
(`task_args.split=0`: no text prefix) and there is no VQA in the mix. Evaluated by captioning
(CIDEr-D, BLEU-4) on held-out scenes. Measured (the command above, 2026-12-02, this 2-core
CPU, 5 min 31 s): on 500 held-out scenes CIDEr-D 4.79 (the best constant caption: 0.85), BLEU-4
0.484 (0.080).
"""

from experiments.configs import common
from experiments.training import config_utils


def get_config(arg=None):
    arg = config_utils.parse_arg(arg, steps=1000, batch=64, lr=1e-3, runlocal=False)
    steps = 6 if arg.runlocal else arg.steps
    config = common.base(total_steps=steps, batch_size=16 if arg.runlocal else arg.batch)
    config.objective = "prefix_lm"
    size = dict(width=96, mlp_dim=384, num_heads=4)
    config.model = dict(
        image=dict(size, depth=2, patch_size=8, posemb="learn"),
        decoder=dict(size, depth=2),
        encoder=dict(depth=2, num_heads=4, mlp_dim=384),
    )
    sizes = dict(train_size=512, test_size=128) if arg.runlocal else {}
    config.data = common.shapes_data(image_size=48, max_len=32, vocab_size=256, **sizes)
    config.data.task = "prefix_lm"
    config.data.task_args = {"split": 0}
    config.evals = dict(
        captioning=dict(
            type="captioning",
            data="vlax_shapes",
            split="test",
            batch_size=32 if arg.runlocal else 64,
            max_examples=64 if arg.runlocal else 500,
            max_new_tokens=32,
        ),
    )
    config.optim = common.adamw(lr=arg.lr, warmup_steps=max(1, steps // 10), weight_decay=0.05)
    config.checkpoint.every_steps = max(1, steps // 2)
    config.log_every_steps = 2 if arg.runlocal else 100
    return config
