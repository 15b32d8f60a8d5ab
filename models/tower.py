"""Fields and sub-blocks shared by the transformer towers (`ViT`, `TextTransformer`).

A tower embeds its input (patches, tokens), runs a `layers.Encoder` named "encoder",
pools (optionally with a `layers.MAPHead` named "map_head") and optionally projects with
a Dense "head". `Tower` holds the fields those shared parts read, so the towers pass each
option once and keep the same parameter names.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models import layers
from models.variants import decode_variant


class Tower(nn.Module):
    """Base of the transformer towers: size fields plus encoder, MAP pooling and head options.

    `variant` ("B/16", "mu", ...) overrides the `size_fields` it names (see `config`).
    Subclasses redeclare the size fields for their own defaults and add their stem and
    pooling fields. `num_classes` adds the Dense "head" (classifier or projection;
    `head_zeroinit=True` for a classifier trained from scratch, as in big_vision).
    """

    variant: str | None = None
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    final_norm: bool = True
    num_classes: int | None = None
    head_bias: bool = True
    head_zeroinit: bool = False
    activation: str = "gelu"
    norm_eps: float = 1e-6
    dropout: float = 0.0
    scan: bool = False
    remat: bool = False
    remat_policy: str = "full"  # with remat: what each block keeps (layers.REMAT_POLICIES)
    jit_blocks: bool = True  # trace one block for every layer (layers.repeated_block)
    dtype: Any = jnp.float32  # activations (models/precision.py)
    matmul_dtype: Any = None  # matmul inputs (None: dtype), float32 accumulation
    attn_implementation: str | None = None

    # The fields `variant` may override; a ViT adds "patch_size".
    size_fields: ClassVar[tuple[str, ...]] = ("width", "depth", "mlp_dim", "num_heads")

    def config(self) -> dict[str, int]:
        """The effective `size_fields` after decoding `variant`."""
        cfg = {name: getattr(self, name) for name in self.size_fields}
        if self.variant is not None:
            decoded = decode_variant(self.variant)
            cfg.update({k: v for k, v in decoded.items() if k in cfg})
        return cfg

    def _encoder(
        self, cfg: dict[str, int], *, causal: bool = False, post_norm: bool = False
    ) -> layers.Encoder:
        """The "encoder" stack: [B, L, D] (and a mask) -> ([B, L, D], aux)."""
        return layers.Encoder(
            depth=cfg["depth"],
            num_heads=cfg["num_heads"],
            mlp_dim=cfg["mlp_dim"],
            activation=self.activation,
            dropout=self.dropout,
            causal=causal,
            scan=self.scan,
            remat=self.remat,
            remat_policy=self.remat_policy,
            jit_blocks=self.jit_blocks,
            final_norm=self.final_norm,
            post_norm=post_norm,
            norm_eps=self.norm_eps,
            attn_implementation=self.attn_implementation,
            dtype=self.dtype,
            matmul_dtype=self.matmul_dtype,
            name="encoder",
        )

    def _map_head(self, cfg: dict[str, int]) -> layers.MAPHead:
        """The "map_head" attention pooling: [B, L, D] (and a key mask) -> [B, D]."""
        return layers.MAPHead(
            num_heads=cfg["num_heads"],
            mlp_dim=cfg["mlp_dim"],
            activation=self.activation,
            norm_eps=self.norm_eps,
            attn_implementation=self.attn_implementation,
            dtype=self.dtype,
            matmul_dtype=self.matmul_dtype,
            name="map_head",
        )

    def _head(self) -> nn.Dense:
        """The "head" Dense: [B, D] -> [B, num_classes]."""
        return layers.dense_head(
            self.num_classes,
            self.head_bias,
            self.head_zeroinit,
            self.dtype,
            name="head",
            matmul_dtype=self.matmul_dtype,
        )
