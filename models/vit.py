"""Vision Transformer image encoder (ViT; big_vision-, CLIP- and SigLIP-style towers).

Configurations of note:
  * big_vision / SigLIP: `pool_type="map"` (or "gap"), `posemb="learn"` or "sincos2d",
    `ln_pre=False`, `final_norm=True`, `activation="gelu_tanh"`.
  * OpenAI CLIP-exact (HF `CLIPVisionModel` + `visual_projection`): `pool_type="cls"`,
    `posemb="learn"` (covers the cls token too), `ln_pre=True`, `patch_bias=False`,
    `final_norm=True`, `num_classes=<embed dim>`, `head_bias=False`,
    `activation="quick_gelu"`, `norm_eps=1e-5`. The final LayerNorm is per token, so
    normalising all tokens and then taking the cls token equals CLIP's post-LN of the
    pooled token; the bias-free "head" is CLIP's projection.

Parameter tree: "embedding" (patch conv), "cls", "pos_embedding", "ln_pre", "encoder"
(see layers.Encoder), "map_head", "head".
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import layers, precision, tower

Array = jax.Array

POOL_TYPES = ("cls", "gap", "map", "none")
POSEMB_TYPES = ("learn", "sincos2d")


class ViT(tower.Tower):
    """ViT. [B, H, W, 3] -> ([B, num_classes or D], aux).

    `variant` ("B/16", "mu/8", ...) overrides width/depth/mlp_dim/num_heads and, when it
    names one, patch_size. Encoder, "map_head" and "head" options: see `tower.Tower`.
    """

    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    patch_size: int = 16
    posemb: str = "learn"
    pool_type: str = "cls"
    ln_pre: bool = False
    patch_bias: bool = True

    size_fields: ClassVar[tuple[str, ...]] = (*tower.Tower.size_fields, "patch_size")

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> tuple[Array, dict[str, Any]]:
        """images: [B, H, W, 3] float, H and W multiples of the patch size.

        Returns (out, aux): out = head(pre_logits) if num_classes else pre_logits;
        aux["pre_logits"] [B, D] (for pool_type "none": [B, N, D]); aux["tokens"] the
        encoded patch tokens [B, N, D] (cls token excluded, final norm applied);
        aux["block_outputs"] per-block [B, N(+1), D] when not scanned.
        """
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"Unknown pool_type {self.pool_type!r}: use one of {POOL_TYPES}.")
        if self.posemb not in POSEMB_TYPES:
            raise ValueError(f"Unknown posemb {self.posemb!r}: use one of {POSEMB_TYPES}.")
        cfg = self.config()
        width, p = cfg["width"], cfg["patch_size"]
        b, h, w, _ = images.shape
        if h % p or w % p:
            raise ValueError(f"Image size {h}x{w} is not a multiple of the patch size {p}.")
        gh, gw = h // p, w // p
        aux: dict[str, Any] = {}

        x = nn.Conv(
            width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=self.patch_bias,
            dtype=self.dtype,
            conv_general_dilated=precision.conv_general_dilated(self.matmul_dtype),
            kernel_init=layers.part(nn.initializers.lecun_normal(), (None, None, None, "embed")),
            bias_init=layers.part(nn.initializers.zeros, ("embed",)),
            name="embedding",
        )(images)
        x = jnp.reshape(x, (b, gh * gw, width))
        x = layers.constrain(x, ("batch", "length", "embed"))

        num_prefix = 1 if self.pool_type == "cls" else 0
        if num_prefix:
            cls = self.param(
                "cls", layers.part(nn.initializers.zeros, (None, None, "embed")), (1, 1, width)
            )
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, width)), x], 1)
        x = x + self._position_embedding(gh, gw, width, num_prefix).astype(x.dtype)
        x = nn.Dropout(self.dropout)(x, not train)
        if self.ln_pre:
            x = layers.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="ln_pre")(x)

        x, enc_aux = self._encoder(cfg)(x, train=train)
        aux.update(enc_aux)
        aux["tokens"] = x[:, num_prefix:]

        if self.pool_type == "cls":
            x = x[:, 0]
        elif self.pool_type == "gap":
            x = jnp.mean(x, axis=1)
        elif self.pool_type == "map":
            x = self._map_head(cfg)(x)
        aux["pre_logits"] = x

        if self.num_classes is not None:
            x = self._head()(x)
        return x, aux

    def _position_embedding(self, gh: int, gw: int, width: int, num_prefix: int) -> Array:
        """[1, num_prefix + gh*gw, D]. Learned rows cover the cls token (as in CLIP); the
        sincos grid gives the cls token a zero row."""
        n = num_prefix + gh * gw
        if self.posemb == "learn":
            return self.param(
                "pos_embedding",
                layers.part(
                    nn.initializers.normal(1.0 / np.sqrt(width)), (None, "patches", "embed")
                ),
                (1, n, width),
            )
        emb = layers.sincos_2d(gh, gw, width)
        return jnp.pad(emb, ((0, 0), (num_prefix, 0), (0, 0)))
