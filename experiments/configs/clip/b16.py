r"""CLIP ViT-B/16 at paper scale (Radford et al. 2021 shapes), for a TPU pod or GPU cluster.

    python -m experiments.train --config experiments/configs/clip/b16.py:data=my_pairs,fsdp=8 \
        --workdir gs://bucket/clip_b16

`data` names a tfds image-text dataset (features "image" + "caption", or COCO-style
"captions/text") prepared as array_record under `data_dir`; `tokenizer` a sentencepiece
model (trained on that dataset's captions if the file does not exist yet).
`runlocal` shrinks everything (mu/16 towers, batch 16, the built-in shapes data) so the
config itself can be checked on a CPU in a minute.

Shapes: ViT-B/16 (768 wide, 12 layers) with pre-LN, class-token pooling and a bias-free
512-d projection; text 512 wide, 12 layers, 8 heads, causal, EOS pooling, 77 tokens;
softmax InfoNCE with learnable temperature (init 1/0.07, clamp 100); AdamW (b2 0.98,
eps 1e-6, wd 0.2), batch 32768. Expected (paper, 400M pairs x 32 epochs): 68.6% ImageNet
zero-shot top-1 for B/16 — this repo has not reproduced that run.
"""

from data import preprocess
from experiments.configs import common
from experiments.training import config_utils


def get_config(arg=None):
    arg = config_utils.parse_arg(
        arg,
        data="coco_captions",
        data_dir="~/tensorflow_datasets",
        tokenizer="",
        batch=32768,
        steps=390_000,
        fsdp=1,
        tensor=1,
        runlocal=False,
        loss="softmax",
    )
    config = common.base(
        total_steps=arg.steps, batch_size=arg.batch, fsdp=arg.fsdp, tensor=arg.tensor
    )
    config.objective = "contrastive"
    out_dim = 512
    config.model = dict(
        image=dict(
            variant="B/16",
            pool_type="cls",
            posemb="learn",
            ln_pre=True,
            patch_bias=False,
            num_classes=out_dim,
            head_bias=False,
            activation="quick_gelu",
            norm_eps=1e-5,
            remat=True,
        ),
        text=dict(
            width=512,
            depth=12,
            mlp_dim=2048,
            num_heads=8,
            causal=True,
            vocab_size=32000,
            pool_type="eos",
            activation="quick_gelu",
            num_classes=out_dim,
            head_bias=False,
            remat=True,
        ),
        loss=arg.loss,
        loss_impl="sharded",
    )
    config.data = common.tfds_data(
        name=arg.data,
        data_dir=arg.data_dir,
        tokenizer=arg.tokenizer,
        image_size=224,
        max_len=77,
        vocab_size=32000,
        mean=tuple(preprocess.CLIP_MEAN),
        std=tuple(preprocess.CLIP_STD),
    )
    config.optim = common.adamw(lr=5e-4, warmup_steps=2000, weight_decay=0.2)
    config.checkpoint.every_steps = 2000
    config.log_every_steps = 100
    config.evals = {}
    return common.cpu_sized(config) if arg.runlocal else config
