"""PrefixLM's "decoder_only" architecture: one decoder over [image tokens; BOS; text].

A prefix-LM mask lets the image tokens, BOS and the text prefix attend bidirectionally and
the suffix causally; the image tokens enter as the decoder's `prefix_embeddings`. It adds no
parameters to the PrefixLM module (no encoder: the decoder has no cross-attention).

A plain strategy object, like prefix_lm_encoder_decoder.EncoderDecoder; its methods take the
PrefixLM module as `lm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models import decoder as decoder_lib
from models import flops as flops_lib
from models import vit as vit_lib


class DecoderOnly:
    """A decoder over the image tokens and the text (see the module docstring)."""

    has_encoder = False
    bidirectional_prompt = True  # the image and the prompt attend to each other

    def setup(self, lm: nn.Module) -> None:
        """Nothing beyond PrefixLM's image tower and decoder."""

    def training_logits(self, lm, batch, has_image, bos, *, train: bool):
        """(logits [B, L, V], targets [B, L] = tokens, loss mask [B, L]: the suffix's real
        tokens). BOS stays a valid key, so no query row is ever without one."""
        tokens, prefix_len = batch["tokens"], batch["prefix_len"]
        img = lm.image_tokens(batch["image"], train=train)
        bsz, n = img.shape[:2]
        text_valid = jnp.concatenate([jnp.ones((bsz, 1), bool), tokens[:, :-1] != lm.pad_id], 1)
        valid = jnp.concatenate([jnp.broadcast_to(has_image[:, None], (bsz, n)), text_valid], 1)
        logits, _ = lm.dec(
            jnp.concatenate([bos, tokens[:, :-1]], axis=1),
            prefix_embeddings=img,
            attention_mask=valid,
            prefix_len=n + 1 + prefix_len,
            train=train,
        )
        positions = jnp.arange(tokens.shape[1])[None, :]
        mask = (positions >= prefix_len[:, None]) & (tokens != lm.pad_id)
        return logits[:, n:], tokens, mask

    def generation_inputs(self, lm, images, prompt_tokens, prompt_lengths, bos):
        """(decoder prompts [B, 1 + P] = BOS + prompt, their lengths [B], the decoder's
        other inputs: the image tokens as its prefix)."""
        prompts = jnp.concatenate([bos, prompt_tokens.astype(jnp.int32)], axis=1)
        lengths = prompt_lengths.astype(jnp.int32) + 1
        return prompts, lengths, dict(prefix_embeddings=lm.image_tokens(images))

    def uncached_logits(self, decoder, variables, tokens, valid, extras):
        """The decoder's full forward over `tokens` [B, T] after the image tokens (the
        no-cache reference of generate): [B, T, V]."""
        image = extras["prefix_embeddings"]
        n = image.shape[1]
        valid = jnp.concatenate([jnp.ones(valid.shape[:1] + (n,), bool), valid], axis=1)
        logits = decoder.apply(
            variables,
            tokens,
            prefix_embeddings=image,
            attention_mask=valid,
            prefix_len=n + extras["prompt_len"],
        )[0]
        return logits[:, n:]

    def decoder_max_len(self, cfg: Mapping[str, Any], data: Mapping[str, Any]) -> int:
        """The image tokens come first, then BOS and the text, and generation continues a
        prompt of up to max_len."""
        patch = vit_lib.ViT(**dict(cfg["image"]), parent=None).config()["patch_size"]
        return (data["image_size"] // patch) ** 2 + 2 * data["max_len"] + 1

    def forward_flops(self, lm, dec: decoder_lib.Decoder, num_image: int, length: int, heads):
        """[(module, forward FLOPs)]: the decoder over image tokens + text."""
        dc = dec.config()
        flops = flops_lib.decoder_forward_flops(
            num_image + length, dc["width"], dc["depth"], dc["mlp_dim"], dec.vocab_size, **heads
        )
        return [(dec, flops)]
