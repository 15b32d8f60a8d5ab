"""PyTorch mirror of objectives/prefix_lm.py `PrefixLM` (SimVLM) and the loader of its exports.

Two architectures (model_config["architecture"]):
  "encoder_decoder": the image's patch tokens ("img", a ViT without pooling, then "img_proj"
      when its width differs from the decoder's) and the embedded text prefix ("txt_embed" +
      "txt_pos") go through a bidirectional "encoder"; the decoder "dec" cross-attends to it
      and predicts the suffix, starting from BOS.
  "decoder_only": one decoder over [image tokens; BOS; text] with a prefix-LM mask.

Inputs, as the run's data pipeline made them:
  images      [B, H, W, 3] float32 NHWC, H = W = image_size, (rgb / 255 - mean) / std;
  tokens      [B, L] int ids of tokenizer.model (text + EOS, right-padded with pad_id);
  prefix_len  [B] int: tokens[:, :prefix_len] are the prefix (input), the rest the target;
  has_image   [B] bool (False: a text-only row, its image tokens are masked out).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import config as config_lib
from . import layers, towers
from .decoder import Decoder
from .files import load_weights, read_config

# The encoder group's fields that change what it computes (the rest: training or speed).
ENCODER_FIELDS = (
    "depth",
    "num_heads",
    "mlp_dim",
    "activation",
    "norm_eps",
    "final_norm",
    "causal",
    "post_norm",
)


def shift_to_suffix(tokens: torch.Tensor, prefix_len: torch.Tensor, pad_id: int) -> torch.Tensor:
    """[B, L] -> [B, L]: row b's tokens[prefix_len[b]:] moved to the front, pad_id after."""
    length = tokens.shape[1]
    idx = prefix_len.long()[:, None] + torch.arange(length, device=tokens.device)[None, :]
    moved = tokens.gather(1, idx.clamp_max(length - 1))
    return torch.where(idx < length, moved, pad_id)


class PrefixLM(nn.Module):
    """SimVLM's prefix LM built from a vlax PrefixLM model config (see the module docstring).

    model_config: {"image": ViT fields, "decoder": Decoder fields, "encoder": layers.Encoder
    fields, "architecture", "bos_id", "eos_id", "pad_id"} as in a checkpoint's metadata
    (absent fields take the vlax defaults); image_size: the training resolution (sizes a
    learned image position table).
    """

    def __init__(self, model_config: Mapping[str, Any], image_size: int):
        super().__init__()
        cfg = config_lib.complete_prefix_lm(model_config)
        arch = cfg["architecture"]
        if arch not in config_lib.ARCHITECTURES:
            raise ValueError(f"architecture must be one of {config_lib.ARCHITECTURES}: {arch!r}")
        self.config = cfg
        self.bos_id, self.eos_id, self.pad_id = cfg["bos_id"], cfg["eos_id"], cfg["pad_id"]
        cross = arch == "encoder_decoder"
        self.dec = Decoder({**cfg["decoder"], "cross_attention": cross})
        width = self.width = self.dec.sizes["width"]
        image = {**cfg["image"], "pool_type": "none", "num_classes": None}
        self.img = towers.ViT(image, image_size)
        img_width = self.img.config["width"]
        self.img_proj = nn.Linear(img_width, width) if img_width != width else None
        self.txt_embed = self.txt_pos = self.encoder = None
        if cross:
            enc = cfg["encoder"]
            self.txt_embed = nn.Embedding(cfg["decoder"]["vocab_size"], width)
            self.txt_pos = nn.Parameter(torch.zeros(cfg["decoder"]["max_len"], width))
            self.encoder = layers.Encoder(
                width=width,
                **{k: enc[k] for k in ENCODER_FIELDS},
            )

    @property
    def architecture(self) -> str:
        return self.config["architecture"]

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] -> [B, N, D] patch tokens in the decoder's width."""
        tokens = self.img(images)
        return tokens if self.img_proj is None else self.img_proj(tokens)

    def memory(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        text_len: torch.Tensor,
        has_image: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """encoder_decoder: (encoder output [B, N + L, D], validity [B, N + L] bool) of the image
        tokens (valid where has_image) and the text prefix text[:, :text_len] ([B, L], [B])."""
        img = self.image_tokens(images)
        (b, n, _), length = img.shape, text.shape[1]
        txt = self.txt_embed(text.long()) + self.txt_pos[None, :length]
        positions = torch.arange(length, device=text.device)
        valid = torch.cat(
            [has_image.bool()[:, None].expand(b, n), positions[None, :] < text_len[:, None]], 1
        )
        x = self.encoder(torch.cat([img, txt], dim=1), valid[:, None, None, :])
        return x, valid

    def targets(
        self, tokens: torch.Tensor, prefix_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets [B, L], loss mask [B, L] bool) aligned with `forward`'s logits: the
        training loss is the mean cross-entropy of logits vs targets where the mask is True."""
        tokens, prefix_len = tokens.long(), prefix_len.long()
        if self.architecture == "encoder_decoder":
            targets = shift_to_suffix(tokens, prefix_len, self.pad_id)
            return targets, targets != self.pad_id
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        mask = (positions[None, :] >= prefix_len[:, None]) & (tokens != self.pad_id)
        return tokens, mask

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        prefix_len: torch.Tensor,
        has_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, L, V] of the training forward (targets and loss mask: `targets`).

        images [B, H, W, 3]; tokens [B, L] int; prefix_len [B] int; has_image [B] bool
        (default all True). encoder_decoder: position t predicts the suffix's t-th token
        (tokens[prefix_len + t]); decoder_only: position t predicts tokens[t].
        """
        tokens, prefix_len = tokens.long(), prefix_len.long()
        bsz = tokens.shape[0]
        if has_image is None:
            has_image = torch.ones(bsz, dtype=torch.bool, device=tokens.device)
        bos = torch.full((bsz, 1), self.bos_id, dtype=torch.long, device=tokens.device)
        if self.architecture == "encoder_decoder":
            mem, mem_valid = self.memory(images, tokens, prefix_len, has_image)
            targets = shift_to_suffix(tokens, prefix_len, self.pad_id)
            mask = targets != self.pad_id
            return self.dec(
                torch.cat([bos, targets[:, :-1]], dim=1),
                memory=mem,
                memory_mask=mem_valid,
                attention_mask=torch.cat([bos != self.pad_id, mask[:, :-1]], dim=1),
            )
        img = self.image_tokens(images)
        n = img.shape[1]
        text_valid = torch.cat(
            [torch.ones_like(bos, dtype=torch.bool), tokens[:, :-1] != self.pad_id], 1
        )
        valid = torch.cat([has_image.bool()[:, None].expand(bsz, n), text_valid], dim=1)
        logits = self.dec(
            torch.cat([bos, tokens[:, :-1]], dim=1),
            prefix_embeddings=img,
            attention_mask=valid,
            prefix_len=n + 1 + prefix_len,
        )
        return logits[:, n:]

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        prompt_tokens: torch.Tensor,
        prompt_lengths: torch.Tensor,
        max_new_tokens: int,
    ) -> torch.Tensor:
        """Greedy continuation of each prompt (the text prefix; length 0 for captioning):
        tokens [B, max_new_tokens] int64, stopping at EOS (kept), pad_id after, as vlax's
        `PrefixLM.generate(..., decode="greedy")["tokens"]`.

        images [B, H, W, 3] (every row has an image); prompt_tokens [B, P] int right-padded;
        prompt_lengths [B] int. Slow but exact: no KV cache (see `Decoder.generate`).
        """
        bsz, device = prompt_tokens.shape[0], prompt_tokens.device
        bos = torch.full((bsz, 1), self.bos_id, dtype=torch.long, device=device)
        common = dict(eos_id=self.eos_id, pad_id=self.pad_id)
        prompt_lengths = prompt_lengths.long()
        if self.architecture == "encoder_decoder":
            has_image = torch.ones(bsz, dtype=torch.bool, device=device)
            mem, mem_valid = self.memory(images, prompt_tokens, prompt_lengths, has_image)
            ones = torch.ones(bsz, dtype=torch.long, device=device)
            return self.dec.generate(
                bos, ones, max_new_tokens, memory=mem, memory_mask=mem_valid, **common
            )
        return self.dec.generate(
            torch.cat([bos, prompt_tokens.long()], dim=1),
            prompt_lengths + 1,
            max_new_tokens,
            prefix_embeddings=self.image_tokens(images),
            prefix_lm=True,
            **common,
        )


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> PrefixLM:
    """The exported prefix-LM model in `directory`, fp32, in eval mode."""
    cfg = read_config(directory)
    return load_weights(PrefixLM(cfg["model_config"], cfg["image_size"]), directory, device)
