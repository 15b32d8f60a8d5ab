"""Plain PyTorch modules of vlax's two-tower contrastive models (`--format torch` exports).

Needs only torch and safetensors (no jax, no vlax); imports inside the package are relative
so the folder also works copied out of the repo:

    from torch_models import load          # experiments.export.torch_models in the repo
    model = load("export_dir")
    zimg = model.encode_image(images)       # [B, H, W, 3] float, NHWC, normalised
    ztxt = model.encode_text(tokens)        # [B, L] int ids of tokenizer.model
    logits = model(images, tokens)          # [B, B'] as the training loss sees them

See two_tower.py for the directory layout and the input preprocessing.
"""

from .config import decode_variant
from .towers import TextTransformer, ViT
from .two_tower import TwoTower, l2_normalize, load, read_config

__all__ = [
    "TextTransformer",
    "TwoTower",
    "ViT",
    "decode_variant",
    "l2_normalize",
    "load",
    "read_config",
]
