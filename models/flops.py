"""Analytic FLOPs of transformer towers (what MFU divides by the hardware's peak).

Counting rules (the usual ones, e.g. PaLM's appendix B and MaxText): a multiply-add is 2 FLOPs;
only matmuls count (norms, softmax, activations are a few % at real widths); attention counts
the full L x L score matrix, causal or not. Per transformer layer over L tokens of width D:

    projections   2 * L * 4 * D^2           (q, k, v, out)
    attention     2 * 2 * L^2 * D           (q k^T and probs v)
    mlp           2 * L * 2 * D * mlp_dim   (3 matrices instead of 2 for a gated/GLU MLP)

Norm placement (pre- or post-LN), an embedding LayerNorm, token-type embeddings (a gather),
padding masks and the pooling position add no matmuls, so BERT- and SigLIP-style text towers
count like any other.

Decoders (`decoder_forward_flops`): grouped-query attention has narrower k/v projections
(num_kv_heads * head_dim) but attends with every query head; a KV-cached call projects only
its new tokens and attends over the whole cache; cross-attention adds q/out on the tokens, k/v
on the memory (once, at prefill) and a T x M score matrix.

Training costs 3x the forward (the backward computes activation and weight gradients, each
about one forward); see `train_flops` for frozen towers.
"""

from __future__ import annotations

from collections.abc import Sequence


def dense_flops(tokens: int, d_in: int, d_out: int) -> float:
    """A [tokens, d_in] x [d_in, d_out] matmul."""
    return 2.0 * tokens * d_in * d_out


def attention_block_flops(q_len: int, kv_len: int, width: int) -> float:
    """Multi-head attention of q_len queries over kv_len keys (any head split of `width`):
    q and out projections on the queries, k and v projections on the keys, q k^T, probs v."""
    projections = dense_flops(q_len, width, width) * 2 + dense_flops(kv_len, width, width) * 2
    return projections + 2.0 * 2.0 * q_len * kv_len * width


def mlp_flops(tokens: int, width: int, mlp_dim: int, *, glu: bool = False) -> float:
    """Two matmuls D -> mlp_dim -> D per token; a gated (GLU/SwiGLU) MLP has a third."""
    return dense_flops(tokens, width, mlp_dim) * (3 if glu else 2)


def transformer_flops_per_example(
    *, seq_len: int, width: int, depth: int, mlp_dim: int, glu: bool = False
) -> float:
    """Forward FLOPs of `depth` self-attention + MLP layers over one [seq_len, width] sequence."""
    layer = attention_block_flops(seq_len, seq_len, width) + mlp_flops(
        seq_len, width, mlp_dim, glu=glu
    )
    return depth * layer


def map_head_flops(seq_len: int, width: int, mlp_dim: int) -> float:
    """Multihead attention pooling: one learned probe attends over seq_len tokens, then an MLP."""
    return attention_block_flops(1, seq_len, width) + mlp_flops(1, width, mlp_dim)


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def vit_forward_flops(
    image_size: int | Sequence[int],
    patch_size: int | Sequence[int],
    width: int,
    depth: int,
    mlp_dim: int,
    num_classes: int | None = None,
    pool_type: str = "gap",
    channels: int = 3,
) -> float:
    """Forward FLOPs of a ViT on one [H, W, channels] image.

    Patch embedding (N = H/p * W/p patches of p*p*channels values) + encoder over N tokens
    (N + 1 with a class token, pool_type="cls") + MAP head (pool_type="map") + a linear head
    of `num_classes` outputs (per pooled vector; per token for pool_type="none").
    """
    if pool_type not in ("gap", "cls", "map", "none"):
        raise ValueError(f"Unknown pool_type {pool_type!r}; valid: cls, gap, map, none")
    (h, w), (ph, pw) = _pair(image_size), _pair(patch_size)
    if h % ph or w % pw:
        raise ValueError(f"image_size {(h, w)} is not a multiple of patch_size {(ph, pw)}")
    patches = (h // ph) * (w // pw)
    seq_len = patches + (1 if pool_type == "cls" else 0)
    flops = dense_flops(patches, ph * pw * channels, width)
    flops += transformer_flops_per_example(
        seq_len=seq_len, width=width, depth=depth, mlp_dim=mlp_dim
    )
    if pool_type == "map":
        flops += map_head_flops(seq_len, width, mlp_dim)
    if num_classes:
        flops += dense_flops(seq_len if pool_type == "none" else 1, width, num_classes)
    return flops


def text_forward_flops(
    seq_len: int,
    width: int,
    depth: int,
    mlp_dim: int,
    num_classes: int | None = None,
    *,
    vocab_size: int | None = None,
    glu: bool = False,
) -> float:
    """Forward FLOPs of a text transformer on one sequence of seq_len tokens.

    The token embedding is a gather (0 FLOPs). `num_classes`: a linear head on the pooled
    vector (e.g. the CLIP projection). `vocab_size`: per-token logits of a language model.
    """
    flops = transformer_flops_per_example(
        seq_len=seq_len, width=width, depth=depth, mlp_dim=mlp_dim, glu=glu
    )
    if num_classes:
        flops += dense_flops(1, width, num_classes)
    if vocab_size:
        flops += dense_flops(seq_len, width, vocab_size)
    return flops


def grouped_attention_flops(
    q_len: int,
    kv_len: int,
    width: int,
    num_heads: int,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    *,
    kv_width: int | None = None,
    projected_kv: int | None = None,
) -> float:
    """Grouped-query attention of q_len queries over kv_len keys: q and out projections (width
    <-> num_heads * head_dim), k and v projections (kv_width, default width, -> num_kv_heads *
    head_dim) of `projected_kv` rows (default kv_len; fewer when a KV cache holds the rest),
    q k^T and probs v over all num_heads heads."""
    head_dim = head_dim or width // num_heads
    q_width, k_width = num_heads * head_dim, (num_kv_heads or num_heads) * head_dim
    projected = kv_len if projected_kv is None else projected_kv
    flops = dense_flops(q_len, width, q_width) + dense_flops(q_len, q_width, width)
    flops += 2 * dense_flops(projected, kv_width or width, k_width)
    return flops + 2.0 * 2.0 * q_len * kv_len * q_width


def decoder_forward_flops(
    seq_len: int,
    width: int,
    depth: int,
    mlp_dim: int,
    vocab_size: int,
    *,
    num_heads: int,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    glu: bool = False,
    context_len: int | None = None,
    memory_len: int = 0,
    memory_width: int | None = None,
    project_memory: bool = True,
) -> float:
    """Forward FLOPs of `models.decoder.Decoder` on one sequence of seq_len new tokens.

    Self-attention: the new tokens' k/v projections, attention over context_len keys (default
    seq_len; a KV-cached call attends over its whole cache: one decoding step is seq_len=1,
    context_len = the cache length). memory_len > 0: cross-attention in every layer over
    memory_len tokens of memory_width (default width), whose k/v projections count only with
    project_memory (the prefill; decoding steps read them from the cache). glu: the SwiGLU MLP.
    Includes the vocab_size logits of every new token (tied or not).
    """
    heads = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim)
    context = seq_len if context_len is None else context_len
    layer = grouped_attention_flops(seq_len, context, width, **heads, projected_kv=seq_len)
    if memory_len:
        layer += grouped_attention_flops(
            seq_len,
            memory_len,
            width,
            **heads,
            kv_width=memory_width,
            projected_kv=memory_len if project_memory else 0,
        )
    layer += mlp_flops(seq_len, width, mlp_dim, glu=glu)
    return depth * layer + dense_flops(seq_len, width, vocab_size)


def train_flops(forward: float, *, frozen: bool = False, backprop_through: bool = False) -> float:
    """FLOPs of one training step of a tower, given its forward FLOPs.

    Trainable: 3x (forward + activation gradients + weight gradients). A frozen tower has no
    weight gradients: 1x when it sits at the input end and no gradient flows through it (LiT's
    locked image tower), 2x when gradients must pass through it to trainable parts before it
    (a frozen LM fed by a trainable vision encoder, as in Frozen). An approximation: with
    trainable pieces inside a frozen tower (Flamingo's gated cross-attention) count those
    pieces separately as trainable.
    """
    if not frozen:
        return 3.0 * forward
    return (2.0 if backprop_through else 1.0) * forward
