"""PrefixLM's "encoder_decoder" architecture (SimVLM).

The image's patch tokens (a ViT, typically a stem and a few blocks) and the embedded text
prefix go through a bidirectional encoder (`models.layers.Encoder`, configured by PrefixLM's
`encoder` group); a text decoder with cross-attention to it predicts the suffix, starting
from BOS.

A plain strategy object: `setup` creates its submodules on the PrefixLM module inside
PrefixLM's own setup, so flax names them "txt_embed", "txt_pos" and "encoder" there, as
checkpoints and the torch export expect. The other methods take that module as `lm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import decoder as decoder_lib
from models import flops as flops_lib
from models import layers


def shift_to_suffix(tokens: jax.Array, prefix_len: jax.Array, pad_id: int) -> jax.Array:
    """[B, L] -> [B, L]: row b's tokens[prefix_len[b]:] moved to the front, pad after."""
    length = tokens.shape[1]
    idx = prefix_len[:, None] + jnp.arange(length)[None, :]
    moved = jnp.take_along_axis(tokens, jnp.minimum(idx, length - 1), axis=1)
    return jnp.where(idx < length, moved, pad_id)


def encoder_kwargs(encoder: Mapping[str, Any] | None, decoder: decoder_lib.Decoder) -> dict:
    """`layers.Encoder` kwargs of the `encoder` config group: what it sets, else depth 2,
    num_heads 4, mlp_dim 4 x the decoder width and the decoder's dtype / matmul_dtype."""
    defaults = {
        "depth": 2,
        "num_heads": 4,
        "mlp_dim": 4 * decoder.config()["width"],
        "dtype": decoder.dtype,
        "matmul_dtype": decoder.matmul_dtype,
    }
    return {**defaults, **dict(encoder or {})}


class EncoderDecoder:
    """SimVLM's encoder-decoder (see the module docstring)."""

    has_encoder = True  # the `encoder` group, whose output the decoder cross-attends to
    bidirectional_prompt = False  # the decoder's input is causal from BOS on

    def setup(self, lm: nn.Module) -> None:
        """Adds the text prefix's embeddings and the encoder to `lm` (inside lm.setup)."""
        lm.txt_embed = nn.Embed(
            lm.dec.vocab_size,
            lm.width,
            embedding_init=layers.part(nn.initializers.normal(0.02), ("vocab", "embed")),
            name="txt_embed",
        )
        lm.txt_pos = lm.param(
            "txt_pos",
            layers.part(nn.initializers.normal(0.01), ("length", "embed")),
            (lm.dec.max_len, lm.width),
        )
        lm.enc = layers.Encoder(**encoder_kwargs(lm.encoder, lm.dec), name="encoder")

    def memory(self, lm, images, text, text_len, has_image, *, train=False):
        """([B, N + L, D] encoder output, [B, N + L] validity) of the image tokens and the
        text prefix text[:, :text_len]; a row without an image has its image tokens masked."""
        img = lm.image_tokens(images, train=train)
        n, length = img.shape[1], text.shape[1]
        txt = lm.txt_embed(text) + lm.txt_pos[None, :length]
        valid = jnp.concatenate(
            [
                jnp.broadcast_to(has_image[:, None], (img.shape[0], n)),
                jnp.arange(length)[None, :] < text_len[:, None],
            ],
            axis=1,
        )
        x, _ = lm.enc(jnp.concatenate([img, txt], axis=1), valid[:, None, None, :], train=train)
        return x, valid

    def training_logits(self, lm, batch, has_image, bos, *, train: bool):
        """(logits [B, L, V], targets [B, L], loss mask [B, L]): the encoder reads the image
        and tokens[:prefix_len]; the decoder predicts the suffix moved to the front."""
        tokens, prefix_len = batch["tokens"], batch["prefix_len"]
        mem, mem_valid = self.memory(lm, batch["image"], tokens, prefix_len, has_image, train=train)
        targets = shift_to_suffix(tokens, prefix_len, lm.pad_id)
        mask = targets != lm.pad_id
        logits, _ = lm.dec(
            jnp.concatenate([bos, targets[:, :-1]], axis=1),
            memory=mem,
            memory_mask=mem_valid,
            train=train,
            attention_mask=jnp.concatenate([bos != lm.pad_id, mask[:, :-1]], 1),
        )
        return logits, targets, mask

    def generation_inputs(self, lm, images, prompt_tokens, prompt_lengths, bos):
        """(decoder prompts [B, 1] = BOS, their lengths [B], the decoder's other inputs):
        the prompt is encoded with the image, so decoding starts from BOS."""
        has_image = jnp.ones(prompt_tokens.shape[:1], bool)
        mem, mem_valid = self.memory(lm, images, prompt_tokens, prompt_lengths, has_image)
        return bos, jnp.ones(bos.shape[:1], jnp.int32), dict(memory=mem, memory_mask=mem_valid)

    def uncached_logits(self, decoder, variables, tokens, valid, extras):
        """The decoder's full forward over `tokens` [B, T] (the no-cache reference of
        generate): [B, T, V]."""
        return decoder.apply(
            variables,
            tokens,
            attention_mask=valid,
            memory=extras["memory"],
            memory_mask=extras["memory_mask"],
        )[0]

    def decoder_max_len(self, cfg: Mapping[str, Any], data: Mapping[str, Any]) -> int:
        """BOS + the text, or BOS + up to max_len generated tokens."""
        return data["max_len"] + 1

    def forward_flops(self, lm, dec: decoder_lib.Decoder, num_image: int, length: int, heads):
        """[(module, forward FLOPs)] of the encoder over image + text and the decoder over
        the text with cross-attention to it, each counted at its module's precision."""
        dc = dec.config()
        encoder = layers.Encoder(**encoder_kwargs(lm.encoder, dec), parent=None)
        memory_len = num_image + length
        enc = flops_lib.transformer_flops_per_example(
            seq_len=memory_len, width=dc["width"], depth=encoder.depth, mlp_dim=encoder.mlp_dim
        )
        decoding = flops_lib.decoder_forward_flops(
            length,
            dc["width"],
            dc["depth"],
            dc["mlp_dim"],
            dec.vocab_size,
            memory_len=memory_len,
            **heads,
        )
        return [(encoder, enc), (dec, decoding)]
