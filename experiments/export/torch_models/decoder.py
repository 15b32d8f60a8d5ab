"""PyTorch mirror of models/decoder.py `Decoder` (causal or prefix LM over token ids).

Every option of the vlax decoder: positions "learn" / "rope" (with rope_base) / "none",
"layernorm" / "rmsnorm", "gelu" / "swiglu" MLPs, attention biases, grouped-query attention
(num_kv_heads, head_dim), tied or untied ("lm_head") output, cross-attention to a memory of
any width, visual prefix embeddings, the prefix-LM mask and padding masks. No KV cache: a
forward pass runs the whole sequence, and `generate` re-runs it for every new token (slow but
exact: the same tokens as vlax's cached greedy decoding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import config as config_lib
from .decoder_layers import DecoderBlock, decoder_mask, norm_layer


class Decoder(nn.Module):
    """Token ids [B, T] -> logits [B, T, V].

    config: models.decoder.Decoder fields (absent ones take the vlax defaults; `variant`
    decodes to sizes). memory_width: the width Dm of the cross-attention memory
    (cross_attention only; default the decoder width).
    """

    def __init__(self, config: Mapping[str, Any], memory_width: int | None = None):
        super().__init__()
        cfg = config_lib.complete(config, config_lib.DECODER_DEFAULTS)
        sizes = config_lib.decoder_sizes(cfg)
        self.config, self.sizes = cfg, sizes
        width = sizes["width"]
        self.token_embedding = nn.Embedding(cfg["vocab_size"], width)
        learn = cfg["posemb"] == "learn"
        self.pos_embedding = nn.Parameter(torch.zeros(cfg["max_len"], width)) if learn else None
        memory_width = (memory_width or width) if cfg["cross_attention"] else None
        self.blocks = nn.ModuleList(
            DecoderBlock(
                width,
                sizes["num_heads"],
                sizes["num_kv_heads"],
                sizes["head_dim"],
                sizes["mlp_dim"],
                mlp_type=cfg["mlp_type"],
                activation=cfg["activation"],
                norm_type=cfg["norm_type"],
                norm_eps=cfg["norm_eps"],
                attn_bias=cfg["attn_bias"],
                rope_base=cfg["rope_base"] if cfg["posemb"] == "rope" else None,
                memory_width=memory_width,
            )
            for _ in range(sizes["depth"])
        )
        self.decoder_norm = norm_layer(cfg["norm_type"], width, cfg["norm_eps"])
        tied = cfg["tie_embeddings"]
        self.lm_head = None if tied else nn.Linear(width, cfg["vocab_size"], bias=False)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        prefix_len: torch.Tensor | None = None,
        prefix_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] of the whole sequence, as vlax's `Decoder.__call__` without a cache.

        tokens [B, T'] int; prefix_embeddings [B, E, D] go before the token embeddings, and
        then T = E + T' for the logits and for: positions [B, T] int (default 0 .. T-1);
        attention_mask [B, T] bool, False = never attended (default: tokens != pad_id when
        pad_id is set, the prefix valid); prefix_len [B] int (positions below it attend
        bidirectionally). memory [B, M, Dm] with memory_mask [B, M] bool: cross_attention.
        """
        cfg = self.config
        tokens = tokens.long()
        x = self.token_embedding(tokens)
        key_valid = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        if cfg["pad_id"] is not None:
            key_valid = tokens != cfg["pad_id"]
        if prefix_embeddings is not None:
            x = torch.cat([prefix_embeddings.to(x.dtype), x], dim=1)
            key_valid = F.pad(key_valid, (prefix_embeddings.shape[1], 0), value=True)
        if attention_mask is not None:
            key_valid = attention_mask.bool()
        batch, length = x.shape[:2]
        if positions is None:
            positions = torch.arange(length, device=x.device).expand(batch, length)
        positions = positions.long()
        if self.pos_embedding is not None:
            if length > cfg["max_len"]:
                raise ValueError(
                    f"{length} tokens exceed max_len={cfg['max_len']} of the learned position "
                    "embedding."
                )
            x = x + self.pos_embedding[positions]
        mask = decoder_mask(length, key_valid, prefix_len)
        memory_mask = self._memory_mask(memory, memory_mask, batch)
        for block in self.blocks:
            x = block(x, mask, positions, memory, memory_mask)
        x = self.decoder_norm(x)
        if self.lm_head is None:
            return x @ self.token_embedding.weight.T
        return self.lm_head(x)

    def _memory_mask(
        self, memory: torch.Tensor | None, memory_mask: torch.Tensor | None, batch: int
    ) -> torch.Tensor | None:
        """The cross-attention mask [B, 1, 1, M] (None without cross_attention)."""
        if not self.config["cross_attention"]:
            if memory is not None:
                raise ValueError("memory was given to a decoder without cross_attention.")
            return None
        if memory is None:
            raise ValueError("cross_attention needs memory [B, M, Dm] (and memory_mask).")
        if memory_mask is None:
            valid = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        else:
            valid = memory_mask.bool()
        return valid.expand(batch, valid.shape[-1])[:, None, None, :]

    @torch.no_grad()
    def generate(
        self,
        prompts: torch.Tensor,
        lengths: torch.Tensor,
        max_new_tokens: int,
        *,
        eos_id: int | None,
        pad_id: int = 0,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        prefix_embeddings: torch.Tensor | None = None,
        prefix_lm: bool = False,
    ) -> torch.Tensor:
        """Greedy continuation of each prompt: tokens [B, max_new_tokens] int64, each row
        stopping at its first `eos_id` (kept) and padded with `pad_id` after, as vlax's
        `generation.greedy` over `decoder.decoding_fns`.

        prompts [B, P] int, right-padded; lengths [B] int >= 1; prefix_embeddings [B, E, D]
        before every prompt; prefix_lm: the prefix and each prompt attend bidirectionally,
        generated tokens causally; memory / memory_mask as in `forward`. Slow but exact: no
        KV cache, every new token re-runs the full forward over prefix + prompt + output.
        """
        batch, prompt_len = prompts.shape
        device = prompts.device
        lengths = lengths.long().to(device)
        if bool((lengths < 1).any()) or bool((lengths > prompt_len).any()):
            raise ValueError(f"prompt lengths must be in [1, {prompt_len}], got {lengths}.")
        num_prefix = 0 if prefix_embeddings is None else prefix_embeddings.shape[1]
        slots = torch.arange(prompt_len + max_new_tokens, device=device)
        seq = torch.full((batch, prompt_len + max_new_tokens), pad_id, device=device)
        seq[:, :prompt_len] = torch.where(slots[:prompt_len] < lengths[:, None], prompts, pad_id)
        out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        rows, ends = torch.arange(batch, device=device), lengths.clone()
        prefix_len = num_prefix + lengths if prefix_lm else None
        for i in range(max_new_tokens):
            length = int(ends.max())
            valid = F.pad(slots[None, :length] < ends[:, None], (num_prefix, 0), value=True)
            logits = self(
                seq[:, :length],
                attention_mask=valid,
                memory=memory,
                memory_mask=memory_mask,
                prefix_len=prefix_len,
                prefix_embeddings=prefix_embeddings,
            )
            last = logits[rows, num_prefix + ends - 1]  # [B, V]: the token after each row
            token = torch.where(done, pad_id, last.argmax(dim=-1))
            out[:, i] = token
            if eos_id is not None:
                done = done | (token == eos_id)
            if bool(done.all()):
                break
            seq[rows, ends] = token
            ends = ends + 1
        return out
