"""Plain PyTorch modules of vlax's models (`--format torch` exports).

Needs only torch and safetensors (no jax, no vlax); imports inside the package are relative
so the folder also works copied out of the repo:

    from torch_models import load          # experiments.export.torch_models in the repo
    model = load("export_dir")              # TwoTower or PrefixLM, per config.json

    # contrastive runs (two_tower.py):
    zimg = model.encode_image(images)       # [B, H, W, 3] float, NHWC, normalised
    ztxt = model.encode_text(tokens)        # [B, L] int ids of tokenizer.model
    logits = model(images, tokens)          # [B, B'] as the training loss sees them

    # prefix_lm runs (prefix_lm.py):
    logits = model(images, tokens, prefix_len, has_image)   # [B, L, V] training logits
    out = model.generate(images, prompts, prompt_lengths, max_new_tokens=16)  # greedy

See files.py for the directory layout, two_tower.py / prefix_lm.py for the inputs.
"""

from .config import decode_variant
from .decoder import Decoder
from .files import read_config
from .loading import load
from .prefix_lm import PrefixLM
from .towers import TextTransformer, ViT
from .two_tower import TwoTower, l2_normalize

__all__ = [
    "Decoder",
    "PrefixLM",
    "TextTransformer",
    "TwoTower",
    "ViT",
    "decode_variant",
    "l2_normalize",
    "load",
    "read_config",
]
