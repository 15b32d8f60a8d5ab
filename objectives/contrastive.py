"""Two-tower contrastive objective: CLIP (softmax), SigLIP (sigmoid), LiT (locked tower).

An image tower (models.vit.ViT) and a text tower (models.text.TextTransformer) map a
batch to L2-normalised embeddings; the loss compares every image with every text of
the *global* batch. LiT is this objective plus a config that initialises one tower
from a checkpoint and freezes it in the optimizer (`config.freeze`); nothing here
changes for it.

Inference methods (for `apply(..., method=...)`): `embed_image`, `embed_text`, and on those
embeddings `match_logits` / `match_probabilities`, the scores the trained loss models.

Parameters: `img/...`, `txt/...`, `log_temp` and (sigmoid only) `logit_bias`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import flops as flops_lib
from models import text as text_lib
from models import vit as vit_lib
from objectives import contrastive_losses, contrastive_reference

LOSSES = ("softmax", "sigmoid")
DEFAULT_TEMPERATURE = {"softmax": 1 / 0.07, "sigmoid": 10.0}


def l2_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _check_widths(zimg: jax.Array, ztxt: jax.Array) -> None:
    if zimg.shape[-1] != ztxt.shape[-1]:
        raise ValueError(
            f"Image embeddings have width {zimg.shape[-1]} but text embeddings "
            f"{ztxt.shape[-1]}: set the same `num_classes` (projection dim) on both towers."
        )


class TwoTower(nn.Module):
    """Contrastive image-text model.

    Attributes:
      image: keyword arguments of `models.vit.ViT` (e.g. variant, num_classes=out dim).
      text: keyword arguments of `models.text.TextTransformer`.
      loss: "softmax" (CLIP InfoNCE) or "sigmoid" (SigLIP).
      loss_impl: "sharded" (all-gather softmax / ring sigmoid over the batch mesh axes;
        exact global negatives), "ring" (both losses on the ring: per-device loss memory
        grows with the local batch only), "gathered" (softmax) or "dense" (the reference).
      temperature_init: initial exp(log_temp); defaults to 1/0.07 (softmax) or 10 (sigmoid).
      bias_init: initial SigLIP logit bias.
    """

    # The module class each nested config group configures (the trainer checks their keys).
    CONFIG_MODULES = {"image": vit_lib.ViT, "text": text_lib.TextTransformer}

    image: Mapping[str, Any]
    text: Mapping[str, Any]
    loss: str = "softmax"
    loss_impl: str = "sharded"
    temperature_init: float | None = None
    bias_init: float = -10.0

    def setup(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}.")
        self.img = vit_lib.ViT(**dict(self.image), name="img")
        self.txt = text_lib.TextTransformer(**dict(self.text), name="txt")
        t0 = self.temperature_init or DEFAULT_TEMPERATURE[self.loss]
        self.log_temp = self.param("log_temp", nn.initializers.constant(math.log(t0)), ())
        if self.loss == "sigmoid":
            self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.bias_init), ())

    def embed_image(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """[B, H, W, 3] float -> L2-normalised [B, D]."""
        z, _ = self.img(images, train=train)
        return l2_normalize(nn.with_logical_constraint(z, ("batch", "embed")))

    def embed_text(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        """[B, L] int32 -> L2-normalised [B, D]."""
        z, _ = self.txt(tokens, train=train)
        return l2_normalize(nn.with_logical_constraint(z, ("batch", "embed")))

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False):
        """batch: {"image": [B, H, W, 3], "tokens": [B, L]} -> (loss, metrics)."""
        return self.loss_from_features(self.features(batch, train=train))

    def features(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> dict:
        """The towers' part of the loss: {"zimg", "ztxt"} [B, D]. With `loss_from_features`,
        the split that exact gradient accumulation needs (experiments/training/accumulation.py)."""
        return {
            "zimg": self.embed_image(batch["image"], train=train),
            "ztxt": self.embed_text(batch["tokens"], train=train),
        }

    def loss_from_features(self, features: Mapping[str, jax.Array]):
        """The contrastive loss of the whole batch's embeddings -> (loss, metrics)."""
        zimg, ztxt = features["zimg"], features["ztxt"]
        _check_widths(zimg, ztxt)
        loss, metrics = contrastive_losses.contrastive_loss(
            self.loss, zimg, ztxt, self.log_temp, self._bias(), impl=self.loss_impl
        )
        # The loss reports the (clamped) logit scale and the bias among its metrics.
        return loss, dict(metrics)

    def match_logits(self, image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
        """The logits the trained loss compares: image_emb [N, D], text_emb [M, D]
        (L2-normalised, as `embed_image` / `embed_text` give them) -> float32 [N, M].

        The loss's own scale: exp(log_temp) capped at 100 for "softmax" (CLIP), uncapped plus
        `logit_bias` for "sigmoid" (SigLIP)."""
        _check_widths(image_emb, text_emb)
        return contrastive_reference.pair_logits(
            self.loss, image_emb, text_emb, self.log_temp, self._bias()
        )

    def match_probabilities(self, image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
        """What the loss models of each pair, [N, D] x [M, D] -> [N, M]: for "softmax" a
        distribution over the M texts per image (rows sum to 1), for "sigmoid" each pair's
        independent probability of matching."""
        logits = self.match_logits(image_emb, text_emb)
        if self.loss == "softmax":
            return jax.nn.softmax(logits, axis=-1)
        return jax.nn.sigmoid(logits)

    def _bias(self) -> jax.Array | None:
        return self.logit_bias if self.loss == "sigmoid" else None

    @classmethod
    def fill_data_fields(cls, cfg: dict, data: Mapping[str, Any]) -> dict:
        """The text tower's vocab_size (default: the tokenizer's), max_len, pad/EOS ids."""
        text = dict(cfg.get("text", {}))
        if not text:
            return cfg
        if data["vocab_size"] is not None:
            text.setdefault("vocab_size", data["vocab_size"])
            if text["vocab_size"] < data["vocab_size"]:
                raise ValueError(
                    f"config.model.text.vocab_size={text['vocab_size']} is smaller than the "
                    f"tokenizer's {data['vocab_size']} pieces ({data['tokenizer_path']})."
                )
        text.setdefault("max_len", data["max_len"])
        text.setdefault("pad_id", data["pad_id"])
        if text.get("pool_type", "eos") == "eos":
            text.setdefault("eos_id", data["eos_id"])
        return {**cfg, "text": text}

    def train_flops_per_example(
        self, shapes: Mapping[str, tuple[int, ...]], frozen: frozenset[str] | set[str] = frozenset()
    ) -> dict[str, float]:
        """Analytic training FLOPs of both towers for one (image, text) pair, keyed by the
        towers' matmul input dtype (MFU divides each share by that dtype's peak).

        shapes: {"image": (H, W, 3), "tokens": (L,)}; frozen: names of fully frozen towers
        ("img"/"txt"); a frozen tower sits at the input end, so it costs one forward pass.
        """
        image = vit_lib.ViT(**dict(self.image), parent=None)
        text = text_lib.TextTransformer(**dict(self.text), parent=None)
        ic, tc = image.config(), text.config()
        img = flops_lib.vit_forward_flops(
            shapes["image"][:2],
            ic["patch_size"],
            ic["width"],
            ic["depth"],
            ic["mlp_dim"],
            num_classes=image.num_classes,
            pool_type=image.pool_type,
        )
        txt = flops_lib.text_forward_flops(
            shapes["tokens"][0],
            tc["width"],
            tc["depth"],
            tc["mlp_dim"],
            num_classes=text.num_classes,
        )
        if text.pool_type == "map":
            txt += flops_lib.map_head_flops(shapes["tokens"][0], tc["width"], tc["mlp_dim"])
        out: dict[str, float] = {}
        for tower, forward, name in ((image, img, "img"), (text, txt, "txt")):
            dtype = jnp.dtype(tower.matmul_dtype or tower.dtype).name
            out[dtype] = out.get(dtype, 0.0) + flops_lib.train_flops(forward, frozen=name in frozen)
        return out
