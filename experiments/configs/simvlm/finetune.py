r"""Fine-tune a pretrained SimVLM checkpoint for VQA or captioning (config.init).

    python -m experiments.train \
        --config experiments/configs/simvlm/finetune.py:init=workdirs/simvlm_tiny,data=easy_vqa \
        --workdir workdirs/simvlm_easy_vqa

`init` is the workdir of a simvlm/tiny run (its whole model is loaded, and its tokenizer
reused: the weights read its token ids). `data`: "easy_vqa" (the real easy-vqa set, 64 px
shapes, 13 answers), "vlax_shapes_vqa" (VQA) or "vlax_shapes" (captioning).
Measured (the command above from the simvlm/tiny run, 2026-12-02, 600 steps, 3 min 57 s):
on 1000 of easy-vqa's test questions, exact-match accuracy 77.7% (majority answer 37.0%; a
question-only prior, the best answer per question, 67.0%).
"""

from experiments.configs import common
from experiments.training import config_utils

_TASKS = {"easy_vqa": "vqa", "vlax_shapes_vqa": "vqa", "vlax_shapes": "prefix_lm"}


def get_config(arg=None):
    arg = config_utils.parse_arg(
        arg,
        init="workdirs/simvlm_tiny",
        data="easy_vqa",
        steps=600,
        batch=64,
        lr=3e-4,
        arch="encoder_decoder",
        runlocal=False,
    )
    if arg.data not in _TASKS:
        raise config_utils.ConfigError(f"data must be one of {sorted(_TASKS)}, got {arg.data!r}")
    steps = 4 if arg.runlocal else arg.steps
    config = common.base(total_steps=steps, batch_size=16 if arg.runlocal else arg.batch)
    config.objective = "prefix_lm"
    size = dict(width=96, mlp_dim=384, num_heads=4)  # simvlm/tiny's model
    config.model = dict(
        image=dict(size, depth=2, patch_size=8, posemb="learn"),
        decoder=dict(size, depth=2),
        encoder=dict(depth=2, num_heads=4, mlp_dim=384),
        architecture=arg.arch,
    )
    towers = ("img", "dec") + (
        ("encoder", "txt_embed", "txt_pos") if arg.arch == "encoder_decoder" else ()
    )
    config.init = dict(checkpoint=arg.init, step=None, load=towers)
    config.data = common.shapes_data(image_size=48, max_len=32, vocab_size=256)
    config.data.name = arg.data
    config.data.source = {} if arg.data == "easy_vqa" else config.data.source
    config.data.task = _TASKS[arg.data]
    split = "test"
    rows = dict(batch_size=32 if arg.runlocal else 64, max_examples=64 if arg.runlocal else 1000)
    if config.data.task == "vqa":
        config.evals = dict(
            vqa=dict(type="vqa", data=arg.data, split=split, max_new_tokens=6, **rows)
        )
    else:
        config.evals = dict(
            captioning=dict(
                type="captioning", data=arg.data, split=split, max_new_tokens=32, **rows
            )
        )
    config.optim = common.adamw(lr=arg.lr, warmup_steps=max(1, steps // 10), weight_decay=0.05)
    config.checkpoint.every_steps = max(1, steps // 2)
    config.log_every_steps = 2 if arg.runlocal else 100
    return config
