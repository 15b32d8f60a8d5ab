r"""SigLIP ViT-B/16 at paper scale (Zhai et al. 2023 shapes), for a TPU pod or GPU cluster.

    python -m experiments.train --config experiments/configs/siglip/b16.py:data=my_pairs,fsdp=8 \
        --workdir gs://bucket/siglip_b16

Data and tokenizer as in clip/b16.py; `runlocal` checks the config on a CPU.

Shapes: ViT-B/16 with MAP-head pooling and learned position embeddings, 768-d embeddings;
text 768 wide, 12 layers, 12 heads, bidirectional with last-token pooling, 64 tokens,
32k vocabulary; sigmoid loss with learnable temperature (init 10) and bias (init -10),
computed by the ring-sharded loss so memory stays per-device; AdamW (b2 0.95, wd 1e-4),
lr 1e-3, batch 32768. Expected (paper, WebLI): ~73% ImageNet zero-shot top-1 at 224 px
after 9B examples — this repo has not reproduced that run.
"""

from experiments.configs import common
from experiments.training import config_utils


def get_config(arg=None):
    arg = config_utils.parse_arg(
        arg,
        data="coco_captions",
        data_dir="~/tensorflow_datasets",
        tokenizer="",
        batch=32768,
        steps=275_000,
        fsdp=1,
        tensor=1,
        runlocal=False,
    )
    config = common.base(
        total_steps=arg.steps, batch_size=arg.batch, fsdp=arg.fsdp, tensor=arg.tensor
    )
    config.objective = "contrastive"
    config.model = dict(
        image=dict(
            variant="B/16",
            pool_type="map",
            posemb="learn",
            num_classes=768,
            activation="gelu_tanh",
            remat=True,
        ),
        text=dict(
            width=768,
            depth=12,
            mlp_dim=3072,
            num_heads=12,
            causal=False,
            vocab_size=32000,
            pool_type="last",
            activation="gelu_tanh",
            num_classes=768,
            remat=True,
        ),
        loss="sigmoid",
        loss_impl="sharded",
        temperature_init=10.0,
        bias_init=-10.0,
    )
    config.data = common.tfds_data(
        name=arg.data,
        data_dir=arg.data_dir,
        tokenizer=arg.tokenizer,
        image_size=224,
        max_len=64,
        vocab_size=32000,
    )
    config.optim = common.adamw(lr=1e-3, warmup_steps=5000, weight_decay=1e-4, b2=0.95, eps=1e-8)
    config.checkpoint.every_steps = 2000
    config.log_every_steps = 100
    config.evals = {}
    return common.cpu_sized(config) if arg.runlocal else config
