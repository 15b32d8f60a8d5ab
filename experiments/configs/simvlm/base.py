r"""SimVLM-Base-like shapes (Wang et al. 2022), for a TPU pod or GPU cluster.

    python -m experiments.train --config experiments/configs/simvlm/base.py:data=my_pairs,fsdp=8 \
        --workdir gs://bucket/simvlm_base

Shapes: a ViT-B stem (768 wide, patch 16, the first 3 blocks; SimVLM uses a ResNet stem)
feeding a 12-layer bidirectional encoder over [image tokens; text prefix], a 12-layer
decoder with cross-attention, 768 wide, 12 heads, 64 text tokens, 32k sentencepiece
vocabulary, 224 px; PrefixLM on image-text pairs with a random split, mixed with text-only
data (`text`) at 20% as in SimVLM's text-only mix; AdamW, lr 5e-4 (warmup 10k), batch 4096.
Expected (paper, ALIGN + C4 data, 1M steps): COCO captioning CIDEr ~134 after fine-tuning,
VQA ~77.9 — this repo has not reproduced that run. `runlocal` checks the config on a CPU
in a minute (micro sizes, the built-in shapes).
"""

from experiments.configs import common
from experiments.training import config_utils


def get_config(arg=None):
    arg = config_utils.parse_arg(
        arg,
        data="coco_captions",
        text="vlax_shapes_text",
        data_dir="~/tensorflow_datasets",
        tokenizer="",
        batch=4096,
        steps=1_000_000,
        fsdp=1,
        tensor=1,
        runlocal=False,
    )
    config = common.base(
        total_steps=arg.steps, batch_size=arg.batch, fsdp=arg.fsdp, tensor=arg.tensor
    )
    config.objective = "prefix_lm"
    config.model = dict(
        image=dict(variant="B/16", depth=3, posemb="learn", remat=True),
        encoder=dict(depth=12, num_heads=12, mlp_dim=3072),
        decoder=dict(width=768, depth=12, mlp_dim=3072, num_heads=12, vocab_size=32000, remat=True),
        architecture="encoder_decoder",
    )
    config.data = common.tfds_data(
        name=arg.data,
        data_dir=arg.data_dir,
        tokenizer=arg.tokenizer,
        image_size=224,
        max_len=64,
        vocab_size=32000,
    )
    config.data.task = "prefix_lm"
    config.data.mix = ((arg.data, 0.8, "prefix_lm"), (arg.text, 0.2, "text_only"))
    config.optim = common.adamw(lr=5e-4, warmup_steps=10_000, weight_decay=0.01)
    config.checkpoint.every_steps = 5000
    config.log_every_steps = 100
    config.evals = {}
    if not arg.runlocal:
        return config
    small = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
    config.model = dict(
        image=dict(small, patch_size=16, posemb="learn"),
        encoder=dict(depth=1, num_heads=2, mlp_dim=64),
        decoder=dict(small, vocab_size=128),
        architecture="encoder_decoder",
    )
    config.update(batch_size=16, total_steps=10, log_every_steps=2)
    del config["data"]
    config.data = common.shapes_data(
        image_size=64, max_len=16, vocab_size=128, train_size=512, test_size=128
    )
    config.data.task = "prefix_lm"
    config.data.mix = (("vlax_shapes", 0.8, "prefix_lm"), ("vlax_shapes_text", 0.2, "text_only"))
    config.optim.update(warmup_steps=2)
    config.checkpoint.every_steps = 5
    config.evals = dict(
        captioning=dict(
            type="captioning",
            data="vlax_shapes",
            split="test",
            batch_size=32,
            max_examples=64,
            max_new_tokens=16,
        )
    )
    return config
