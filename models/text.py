"""Text transformer encoder (causal CLIP-style or bidirectional BERT/SigLIP-style).

Configurations of note:
  * OpenAI CLIP-exact (HF `CLIPTextModel` + `text_projection`): `causal=True`,
    `pool_type="eos"` with `eos_id` = the end-of-text id, `final_norm=True`,
    `activation="quick_gelu"`, `norm_eps=1e-5`, `num_classes=<embed dim>`,
    `head_bias=False`. Padding after EOS cannot change the EOS output under a causal mask.
  * SigLIP (big_vision / HF `SiglipTextModel`): `causal=False`, `pool_type="final"`,
    `mask_padding=False`, `activation="gelu_tanh"`, `num_classes=<embed dim>` with a bias.
  * BERT (HF `BertModel`, e.g. sentence-transformers MiniLM): `causal=False`,
    `post_norm=True`, `final_norm=False`, `embed_norm=True`, `type_vocab_size=2`,
    `activation="gelu"`, `norm_eps=1e-12`, `pool_type="mean"` (see experiments/interop/hf_bert.py).

Parameter tree: "token_embedding", "pos_embedding", "type_embedding", "embedding_norm",
"encoder" (see layers.Encoder), "map_head", "head" (the optional ones only when enabled).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers, tower

Array = jax.Array

POOL_TYPES = ("eos", "first", "last", "final", "mean", "map")


class TextTransformer(tower.Tower):
    """Token ids [B, L] -> ([B, num_classes or D], aux).

    Tokens equal to `pad_id` are masked out of attention keys and of mean/MAP pooling;
    `mask_padding=False` treats them like any other token there (SigLIP's text tower has no
    mask). Pooling: "eos" = the first token equal to `eos_id` (rows without one, or any row
    when `eos_id` is None, fall back to the last non-pad token); "first" = position 0;
    "last" = the last non-pad token; "final" = position L-1 whatever it holds (SigLIP);
    "mean" = mean over non-pad tokens; "map" = attention pooling.

    BERT-style options: `post_norm` (post-LN blocks, needs `final_norm=False`), `embed_norm`
    (a LayerNorm "embedding_norm" on the summed embeddings) and `type_vocab_size` > 0 (a
    token-type table "type_embedding"; every token has type 0: single-sentence inputs).
    `variant` ("B", "mu", ...) overrides width/depth/mlp_dim/num_heads.
    """

    width: int = 512
    depth: int = 12
    mlp_dim: int = 2048
    num_heads: int = 8
    vocab_size: int = 32000
    max_len: int = 64
    causal: bool = True
    pool_type: str = "eos"
    pad_id: int = 0
    eos_id: int | None = None
    mask_padding: bool = True
    post_norm: bool = False
    embed_norm: bool = False
    type_vocab_size: int = 0

    @nn.compact
    def __call__(self, tokens: Array, *, train: bool = False) -> tuple[Array, dict[str, Any]]:
        """tokens: [B, L] int, L <= max_len.

        Returns (out, aux): out = head(pre_logits) if num_classes else pre_logits;
        aux["pre_logits"] [B, D]; aux["tokens"] [B, L, D] (the encoder's output);
        aux["block_outputs"] per-block [B, L, D] when not scanned.
        """
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"Unknown pool_type {self.pool_type!r}: use one of {POOL_TYPES}.")
        cfg = self.config()
        width = cfg["width"]
        _, length = tokens.shape
        if length > self.max_len:
            raise ValueError(
                f"Token sequence length {length} exceeds max_len={self.max_len} of the text "
                "encoder: truncate the input or raise max_len."
            )
        valid = tokens != self.pad_id  # [B, L]
        # None: padding is attended to and pooled like any other token.
        key_mask = valid if self.mask_padding else None

        x = layers.Embed(
            self.vocab_size,
            width,
            dtype=self.dtype,
            embedding_init=layers.part(nn.initializers.normal(0.02), ("vocab", "embed")),
            name="token_embedding",
        )(tokens)
        pos = self.param(
            "pos_embedding",
            layers.part(nn.initializers.normal(0.01), ("length", "embed")),
            (self.max_len, width),
        )
        x = x + pos[None, :length].astype(x.dtype)
        if self.type_vocab_size > 0:
            # Every token has type 0: look up that one row, [1, 1, D].
            x = x + layers.Embed(
                self.type_vocab_size,
                width,
                dtype=self.dtype,
                embedding_init=layers.part(nn.initializers.normal(0.02), ("vocab", "embed")),
                name="type_embedding",
            )(jnp.zeros((1, 1), jnp.int32))
        if self.embed_norm:
            x = layers.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="embedding_norm")(x)
        x = layers.constrain(x, ("batch", "length", "embed"))
        x = nn.Dropout(self.dropout)(x, not train)

        encoder = self._encoder(cfg, causal=self.causal, post_norm=self.post_norm)
        x, aux = encoder(x, None if key_mask is None else key_mask[:, None, None, :], train=train)
        aux["tokens"] = x

        if self.pool_type == "first":
            x = x[:, 0]
        elif self.pool_type == "final":
            x = x[:, -1]
        elif self.pool_type == "mean" and key_mask is None:
            x = jnp.mean(x, axis=1)
        elif self.pool_type == "mean":
            weights = key_mask.astype(x.dtype)[..., None]
            x = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        elif self.pool_type == "map":
            x = self._map_head(cfg)(x, key_mask)
        else:
            x = jnp.take_along_axis(x, self._pool_index(tokens, valid)[:, None, None], axis=1)
            x = x[:, 0]
        aux["pre_logits"] = x

        if self.num_classes is not None:
            x = self._head()(x)
        return x, aux

    def _pool_index(self, tokens: Array, valid: Array) -> Array:
        """[B] position pooled by "eos" / "last" (see the class docstring)."""
        length = tokens.shape[1]
        positions = jnp.arange(length)
        last_valid = jnp.max(jnp.where(valid, positions, 0), axis=1)
        if self.pool_type == "last" or self.eos_id is None:
            return last_valid
        is_eos = tokens == self.eos_id
        first_eos = jnp.argmax(is_eos, axis=1)
        return jnp.where(jnp.any(is_eos, axis=1), first_eos, last_valid)
