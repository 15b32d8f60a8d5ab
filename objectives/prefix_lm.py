"""PrefixLM (SimVLM; VirTex with an empty prefix): image + text prefix -> the rest of the text.

Two architectures, one objective (`architecture`):

  "encoder_decoder" (SimVLM): the image's patch tokens (a ViT, typically a stem and a few
      blocks: `image` with pool_type "none") and the embedded text prefix go through a
      bidirectional encoder; a text decoder with cross-attention to it predicts the suffix,
      starting from BOS.
  "decoder_only": one decoder over [image tokens; BOS; text] with a prefix-LM mask (image,
      BOS and the text prefix attend bidirectionally, the suffix causally).

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

ARCHITECTURES = ("encoder_decoder", "decoder_only")
ENCODER_KEYS = {"depth", "num_heads", "mlp_dim"}


def shift_to_suffix(tokens: jax.Array, prefix_len: jax.Array, pad_id: int) -> jax.Array:
    """[B, L] -> [B, L]: row b's tokens[prefix_len[b]:] moved to the front, pad after."""
    length = tokens.shape[1]
    idx = prefix_len[:, None] + jnp.arange(length)[None, :]
    moved = jnp.take_along_axis(tokens, jnp.minimum(idx, length - 1), axis=1)
    return jnp.where(idx < length, moved, pad_id)


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array):
    """Mean token cross-entropy over mask=True positions, and the token accuracy there."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weight = mask.astype(jnp.float32)
    count = jnp.maximum(weight.sum(), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return (nll * weight).sum() / count, (correct * weight).sum() / count


def _uncached_logits(decoder, variables, tokens, valid, extras):
    """The decoder's full forward over `tokens` (the no-cache reference of generate)."""
    image = extras.get("prefix_embeddings")
    if image is None:
        return decoder.apply(
            variables,
            tokens,
            attention_mask=valid,
            memory=extras["memory"],
            memory_mask=extras["memory_mask"],
        )[0]
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


class PrefixLM(nn.Module):
    """SimVLM's prefix-LM objective (see the module docstring).

    Attributes:
      image: models.vit.ViT kwargs (pool_type "none" is forced: the patch tokens are used).
      decoder: models.decoder.Decoder kwargs (vocab_size, max_len, pad_id come from the data).
      encoder: layers.Encoder sizes of the bidirectional encoder (encoder_decoder only):
        {"depth", "num_heads", "mlp_dim"}; its width is the decoder's.
      architecture: "encoder_decoder" or "decoder_only".
      bos_id, eos_id, pad_id: the tokenizer's special ids (filled in from the data).
    """

    CONFIG_MODULES = {"image": vit_lib.ViT, "decoder": decoder_lib.Decoder}

    image: Mapping[str, Any]
    decoder: Mapping[str, Any]
    encoder: Mapping[str, Any] | None = None
    architecture: str = "encoder_decoder"
    bos_id: int = 2
    eos_id: int = 3
    pad_id: int = 0

    def setup(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        dec = dict(self.decoder)
        dec.setdefault("pad_id", self.pad_id)
        cross = self.architecture == "encoder_decoder"
        self.dec = decoder_lib.Decoder(**dec, cross_attention=cross, name="dec")
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
        if cross:
            enc = dict(self.encoder or {})
            self.txt_embed = nn.Embed(
                self.dec.vocab_size,
                self.width,
                embedding_init=layers.part(nn.initializers.normal(0.02), ("vocab", "embed")),
                name="txt_embed",
            )
            self.txt_pos = self.param(
                "txt_pos",
                layers.part(nn.initializers.normal(0.01), ("length", "embed")),
                (self.dec.max_len, self.width),
            )
            self.enc = layers.Encoder(
                depth=enc.get("depth", 2),
                num_heads=enc.get("num_heads", 4),
                mlp_dim=enc.get("mlp_dim", 4 * self.width),
                dtype=enc.get("dtype", self.dec.dtype),
                matmul_dtype=enc.get("matmul_dtype", self.dec.matmul_dtype),
                name="encoder",
            )

    # ---------------------------------------------------------------- pieces

    def image_tokens(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """[B, H, W, 3] -> [B, N, D] patch tokens in the decoder's width."""
        tokens = self.img(images, train=train)[0]
        return self.img_proj(tokens) if self.img.config()["width"] != self.width else tokens

    def memory(self, images, text, text_len, has_image, *, train=False):
        """encoder_decoder: ([B, N + L, D] encoder output, [B, N + L] validity) of the image
        tokens and the text prefix text[:, :text_len]."""
        img = self.image_tokens(images, train=train)
        n, length = img.shape[1], text.shape[1]
        txt = self.txt_embed(text) + self.txt_pos[None, :length]
        valid = jnp.concatenate(
            [
                jnp.broadcast_to(has_image[:, None], (img.shape[0], n)),
                jnp.arange(length)[None, :] < text_len[:, None],
            ],
            axis=1,
        )
        x, _ = self.enc(jnp.concatenate([img, txt], axis=1), valid[:, None, None, :], train=train)
        return x, valid

    # ---------------------------------------------------------------- training

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False):
        tokens, prefix_len = batch["tokens"], batch["prefix_len"]
        has_image = batch.get("has_image")
        if has_image is None:
            has_image = jnp.ones(tokens.shape[:1], bool)
        bsz = tokens.shape[0]
        bos = jnp.full((bsz, 1), self.bos_id, tokens.dtype)
        if self.architecture == "encoder_decoder":
            mem, mem_valid = self.memory(batch["image"], tokens, prefix_len, has_image, train=train)
            targets = shift_to_suffix(tokens, prefix_len, self.pad_id)
            inputs = jnp.concatenate([bos, targets[:, :-1]], axis=1)
            mask = targets != self.pad_id
            logits, _ = self.dec(
                inputs,
                memory=mem,
                memory_mask=mem_valid,
                train=train,
                attention_mask=jnp.concatenate([bos != self.pad_id, mask[:, :-1]], 1),
            )
        else:
            img = self.image_tokens(batch["image"], train=train)
            n = img.shape[1]
            inputs = jnp.concatenate([bos, tokens[:, :-1]], axis=1)
            text_valid = jnp.concatenate(
                [jnp.ones((bsz, 1), bool), tokens[:, :-1] != self.pad_id], 1
            )
            valid = jnp.concatenate([jnp.broadcast_to(has_image[:, None], (bsz, n)), text_valid], 1)
            logits, _ = self.dec(
                inputs,
                prefix_embeddings=img,
                attention_mask=valid,
                prefix_len=n + 1 + prefix_len,
                train=train,
            )
            logits, targets = logits[:, n:], tokens
            mask = (jnp.arange(tokens.shape[1])[None, :] >= prefix_len[:, None]) & (
                tokens != self.pad_id
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
        bsz = prompt_tokens.shape[0]
        has_image = jnp.ones((bsz,), bool)
        variables = {"params": self.dec.variables["params"]}
        bos = jnp.full((bsz, 1), self.bos_id, jnp.int32)
        unbound = self.dec.clone(parent=None)
        if self.architecture == "encoder_decoder":
            mem, mem_valid = self.memory(images, prompt_tokens, prompt_lengths, has_image)
            prompts, lengths = bos, jnp.ones((bsz,), jnp.int32)
            inputs = dict(memory=mem, memory_mask=mem_valid)
        else:
            prompts = jnp.concatenate([bos, prompt_tokens.astype(jnp.int32)], axis=1)
            lengths = prompt_lengths.astype(jnp.int32) + 1
            inputs = dict(prefix_embeddings=self.image_tokens(images))
        if use_cache:
            prefill, step = decoder_lib.decoding_fns(
                unbound,
                variables,
                max_new_tokens=max_new_tokens,
                prefix_lm=self.architecture == "decoder_only",
                **inputs,
            )
        else:
            prefill, step = generation.full_forward_fns(
                functools.partial(_uncached_logits, unbound, variables),
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
        dec = dict(cfg.get("decoder", {}))
        if data["vocab_size"] is None and "vocab_size" not in dec:
            raise ValueError("config.model.decoder.vocab_size is needed without a tokenizer")
        dec.setdefault("vocab_size", data["vocab_size"])
        unknown = sorted(set(cfg.get("encoder") or {}) - ENCODER_KEYS)
        if unknown:
            raise ValueError(
                f"Unknown config key(s) config.model.encoder.{unknown}; "
                f"valid: {sorted(ENCODER_KEYS)}"
            )
        length = data["max_len"] + 1  # BOS + the text, or BOS + up to max_len generated tokens
        if cfg.get("architecture", "encoder_decoder") == "decoder_only":
            patch = vit_lib.ViT(**dict(cfg["image"]), parent=None).config()["patch_size"]
            # The image tokens come first, and generation continues a prompt of up to max_len.
            length += (data["image_size"] // patch) ** 2 + data["max_len"]
        dec.setdefault("max_len", length)
        if data["vocab_size"] is not None and dec["vocab_size"] < data["vocab_size"]:
            raise ValueError(
                f"config.model.decoder.vocab_size={dec['vocab_size']} is smaller "
                f"than the tokenizer's {data['vocab_size']}"
            )
        for key in ("bos_id", "eos_id", "pad_id"):
            cfg.setdefault(key, data[key])
        return {**cfg, "decoder": dec}

    def train_flops_per_example(self, shapes, frozen=frozenset()) -> dict[str, float]:
        """Analytic training FLOPs of one example (image tower, encoder, decoder)."""
        image = vit_lib.ViT(
            **{**dict(self.image), "pool_type": "none", "num_classes": None}, parent=None
        )
        dec_cfg = {**dict(self.decoder), "cross_attention": self.architecture == "encoder_decoder"}
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
        if self.architecture == "encoder_decoder":
            enc = dict(self.encoder or {})
            rest = flops_lib.transformer_flops_per_example(
                seq_len=n + length,
                width=dc["width"],
                depth=enc.get("depth", 2),
                mlp_dim=enc.get("mlp_dim", 4 * dc["width"]),
            )
            rest += flops_lib.decoder_forward_flops(
                length,
                dc["width"],
                dc["depth"],
                dc["mlp_dim"],
                dec.vocab_size,
                memory_len=n + length,
                **heads,
            )
        else:
            rest = flops_lib.decoder_forward_flops(
                n + length, dc["width"], dc["depth"], dc["mlp_dim"], dec.vocab_size, **heads
            )
        out: dict[str, float] = {}
        for module, value in (
            (image, flops_lib.train_flops(img, frozen="img" in frozen)),
            (dec, flops_lib.train_flops(rest)),
        ):
            dtype = jnp.dtype(module.matmul_dtype or module.dtype).name
            out[dtype] = out.get(dtype, 0.0) + value
        return out
