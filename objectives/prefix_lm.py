"""PrefixLM (SimVLM; VirTex with an empty prefix): image + text prefix -> the rest of the text.

Two architectures, one objective (`architecture`, resolved through `ARCHITECTURES`):

  "encoder_decoder" (SimVLM, prefix_lm_encoder_decoder.py): the image's patch tokens and the
      embedded text prefix go through a bidirectional encoder (the `encoder` config group); a
      text decoder with cross-attention to it predicts the suffix, starting from BOS.
  "decoder_only" (prefix_lm_decoder_only.py): one decoder over [image tokens; BOS; text] with
      a prefix-LM mask (image, BOS and the text prefix attend bidirectionally, the suffix
      causally).

This module keeps what both share: the config fields, the image tower, the decoder, the loss,
the generation plumbing and the data fields; the architecture object builds and runs the rest.

Batch (data task "prefix_lm", "text_only" or "vqa"):
    image [B, H, W, 3]; tokens int32 [B, L] (text pieces + EOS, right-padded);
    prefix_len int32 [B] (the loss is on tokens[prefix_len:] that are not padding);
    has_image bool [B] (False: text-only rows; their image tokens are masked out).

`generate(images, prompt_tokens, prompt_lengths, *, max_new_tokens, decode)` continues each
prompt (the prefix; empty for captioning) with models.generation on the decoder's KV cache.

Parameters: "img" (ViT), "img_proj" (when the ViT width differs), "txt_embed" + "txt_pos"
and "encoder" (encoder_decoder), "dec" (models.decoder.Decoder).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import decoder as decoder_lib
from models import flops as flops_lib
from models import generation, layers
from models import vit as vit_lib
from objectives.prefix_lm_decoder_only import DecoderOnly
from objectives.prefix_lm_encoder_decoder import EncoderDecoder

# name -> the architecture's strategy object (stateless; its methods take the PrefixLM module).
_ARCHITECTURES = {"encoder_decoder": EncoderDecoder(), "decoder_only": DecoderOnly()}
ARCHITECTURES = tuple(_ARCHITECTURES)


def architecture(name: str) -> EncoderDecoder | DecoderOnly:
    """The architecture registered under `name` (ValueError naming the choices)."""
    if name not in _ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {name!r}")
    return _ARCHITECTURES[name]


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array):
    """Mean token cross-entropy over mask=True positions, and the token accuracy there."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weight = mask.astype(jnp.float32)
    count = jnp.maximum(weight.sum(), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return (nll * weight).sum() / count, (correct * weight).sum() / count


class PrefixLM(nn.Module):
    """SimVLM's prefix-LM objective (see the module docstring).

    Attributes:
      image: models.vit.ViT kwargs (pool_type "none" is forced: the patch tokens are used).
      decoder: models.decoder.Decoder kwargs (vocab_size, max_len, pad_id come from the data).
      encoder: models.layers.Encoder kwargs of the bidirectional encoder; its width is the
        decoder's; depth 2, num_heads 4, mlp_dim 4 x the width and the decoder's dtype /
        matmul_dtype unless set. Used by encoder_decoder only: decoder_only ignores it, so
        one config (and an architecture sweep over it) can hold both.
      architecture: "encoder_decoder" or "decoder_only".
      bos_id, eos_id, pad_id: the tokenizer's special ids (filled in from the data).
    """

    CONFIG_MODULES = {
        "image": vit_lib.ViT,
        "decoder": decoder_lib.Decoder,
        "encoder": layers.Encoder,
    }

    image: Mapping[str, Any]
    decoder: Mapping[str, Any]
    encoder: Mapping[str, Any] | None = None
    architecture: str = "encoder_decoder"
    bos_id: int = 2
    eos_id: int = 3
    pad_id: int = 0

    def setup(self):
        arch = architecture(self.architecture)
        dec = dict(self.decoder)
        dec.setdefault("pad_id", self.pad_id)
        self.dec = decoder_lib.Decoder(**dec, cross_attention=arch.has_encoder, name="dec")
        self.width = self.dec.config()["width"]
        self.img = vit_lib.ViT(
            **{**dict(self.image), "pool_type": "none", "num_classes": None}, name="img"
        )
        if self.img.config()["width"] != self.width:
            self.img_proj = layers.dense_head(
                self.width,
                True,
                False,
                self.dec.dtype,
                "img_proj",
                matmul_dtype=self.dec.matmul_dtype,
            )
        arch.setup(self)

    def image_tokens(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """[B, H, W, 3] -> [B, N, D] patch tokens in the decoder's width."""
        tokens = self.img(images, train=train)[0]
        return self.img_proj(tokens) if self.img.config()["width"] != self.width else tokens

    # ---------------------------------------------------------------- training

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False):
        tokens = batch["tokens"]
        has_image = batch.get("has_image")
        if has_image is None:
            has_image = jnp.ones(tokens.shape[:1], bool)
        bos = jnp.full((tokens.shape[0], 1), self.bos_id, tokens.dtype)
        logits, targets, mask = architecture(self.architecture).training_logits(
            self, batch, has_image, bos, train=train
        )
        loss, accuracy = masked_cross_entropy(logits, targets, mask)
        return loss, {"token_accuracy": accuracy, "target_tokens": mask.sum(1).mean()}

    # ---------------------------------------------------------------- inference

    def generate(
        self,
        images,
        prompt_tokens,
        prompt_lengths,
        *,
        max_new_tokens: int,
        decode: str = "greedy",
        use_cache: bool = True,
    ):
        """Continues each prompt: {"tokens": [B, max_new_tokens] (EOS-terminated, then pad),
        "scores": [B] log-probability}. prompt_tokens [B, P] right-padded, lengths [B].

        `use_cache=False` re-runs the whole decoder for every new token (the plain reference
        the KV-cache path is tested and benchmarked against)."""
        arch = architecture(self.architecture)
        variables = {"params": self.dec.variables["params"]}
        bos = jnp.full((prompt_tokens.shape[0], 1), self.bos_id, jnp.int32)
        unbound = self.dec.clone(parent=None)
        prompts, lengths, inputs = arch.generation_inputs(
            self, images, prompt_tokens, prompt_lengths, bos
        )
        if use_cache:
            prefill, step = decoder_lib.decoding_fns(
                unbound,
                variables,
                max_new_tokens=max_new_tokens,
                prefix_lm=arch.bidirectional_prompt,
                **inputs,
            )
        else:
            prefill, step = generation.full_forward_fns(
                functools.partial(arch.uncached_logits, unbound, variables),
                max_new_tokens,
                extras={**inputs, "prompt_len": lengths},
            )
        tokens, scores = generation.decode(
            decode,
            prefill,
            step,
            prompts,
            lengths,
            max_new_tokens=max_new_tokens,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
        )
        return {"tokens": tokens, "scores": scores}

    # ---------------------------------------------------------------- config and FLOPs

    @classmethod
    def fill_data_fields(cls, cfg: dict, data: Mapping[str, Any]) -> dict:
        """The decoder's vocab_size / max_len / pad_id and the special ids from the data."""
        arch = architecture(cfg.get("architecture", "encoder_decoder"))
        dec = dict(cfg.get("decoder", {}))
        if data["vocab_size"] is None and "vocab_size" not in dec:
            raise ValueError("config.model.decoder.vocab_size is needed without a tokenizer")
        dec.setdefault("vocab_size", data["vocab_size"])
        dec.setdefault("max_len", arch.decoder_max_len(cfg, data))
        if data["vocab_size"] is not None and dec["vocab_size"] < data["vocab_size"]:
            raise ValueError(
                f"config.model.decoder.vocab_size={dec['vocab_size']} is smaller "
                f"than the tokenizer's {data['vocab_size']}"
            )
        for key in ("bos_id", "eos_id", "pad_id"):
            cfg.setdefault(key, data[key])
        return {**cfg, "decoder": dec}

    def train_flops_per_example(self, shapes, frozen=frozenset()) -> dict[str, float]:
        """Analytic training FLOPs of one example (image tower, encoder, decoder), keyed by
        each module's matmul input dtype."""
        arch = architecture(self.architecture)
        image = vit_lib.ViT(
            **{**dict(self.image), "pool_type": "none", "num_classes": None}, parent=None
        )
        dec_cfg = {**dict(self.decoder), "cross_attention": arch.has_encoder}
        dec = decoder_lib.Decoder(**dec_cfg, parent=None)
        ic, dc = image.config(), dec.config()
        size, length = shapes["image"][:2], shapes["tokens"][0]
        n = int(np.prod([s // ic["patch_size"] for s in size]))
        img = flops_lib.vit_forward_flops(
            size, ic["patch_size"], ic["width"], ic["depth"], ic["mlp_dim"], pool_type="none"
        )
        if ic["width"] != dc["width"]:
            img += flops_lib.dense_flops(n, ic["width"], dc["width"])
        heads = dict(
            num_heads=dc["num_heads"],
            num_kv_heads=dc["num_kv_heads"],
            head_dim=dc["head_dim"],
            glu=dec.mlp_type == "swiglu",
        )
        parts = [(image, flops_lib.train_flops(img, frozen="img" in frozen))]
        for module, forward in arch.forward_flops(self, dec, n, length, heads):
            parts.append((module, flops_lib.train_flops(forward)))
        out: dict[str, float] = {}
        for module, value in parts:
            dtype = jnp.dtype(module.matmul_dtype or module.dtype).name
            out[dtype] = out.get(dtype, 0.0) + value
        return out
