"""Flax Linen modules only: no losses, no data, no I/O; objectives build them from plain fields.

`vit` (image tower), `text` (text encoder: CLIP-, SigLIP- and BERT-style), `decoder` and
`decoder_block` (causal / prefix-LM decoder with cross-attention and a KV cache), `attention`
(multi-head / grouped-query attention, RoPE, the decode cache), `layers` (MLP, norms,
position embeddings, repeated / scanned blocks), `generation` (greedy, sampling, beam search),
`tower` (fields every tower shares), `variants` ("B/16" -> sizes), `precision` (the dtype
policies), `axes` (logical axis names), `flops` (analytic FLOPs for MFU).
"""
