"""Shared transformer layers: MLP, norms, position embeddings, encoder stack (attention is in
models/attention.py, the logical-axis helpers `part`/`constrain` in models/axes.py).

Every parameter is created through `nn.with_logical_partitioning` and main activations go
through `nn.with_logical_constraint`, using the logical axes
`batch, length, embed, mlp, heads, kv, vocab, patches, latents` (plus `layers`, the
leading axis that `nn.scan` adds to stacked block parameters). Configs map these to mesh
axes; outside a mesh/rules context the annotations are no-ops.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import precision
from models.attention import MultiHeadAttention
from models.axes import LAYERS_AXIS, constrain, part

# What a rematerialised block keeps for the backward pass (`remat_policy`, used with remat):
# "full" keeps only the block's input and recomputes everything; "save_dots" keeps every
# matmul output (less recompute, more memory); "save_dots_no_batch" keeps the weight matmuls'
# outputs but recomputes the attention scores (whose size grows with length squared).
REMAT_POLICIES = {
    "full": None,
    "save_dots": jax.checkpoint_policies.dots_saveable,
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str):
    """The jax.checkpoint policy of a REMAT_POLICIES name (ValueError naming the choices)."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"Unknown remat_policy {name!r}: use one of {sorted(REMAT_POLICIES)}.")
    return REMAT_POLICIES[name]


def repeated_block(
    block_cls: type[nn.Module], stack: nn.Module, *, deterministic_argnum: int
) -> type[nn.Module]:
    """The block class a layer stack instantiates once per layer, with the transforms its
    fields ask for (`stack.remat`, `.remat_policy`, `.scan`, `.jit_blocks`).

    `remat`: recompute each block's activations in the backward pass (`remat_policy` says
    what it keeps). `jit_blocks` (unscanned stacks): wrap the block in `nn.jit`, so JAX
    traces one block and reuses the trace for every layer of the same configuration
    (flax's trace cache ignores a module's name and parent). The program XLA compiles is
    the same (the calls are inlined); tracing and lowering a ViT-S/16 CLIP train step took
    1.2 s instead of 1.9-2.3 s. A scanned stack traces one block anyway, and init traces
    every layer, so the initial parameters equal the plain stack's (nn.jit would derive the
    blocks' RNGs by another route). `deterministic_argnum` (self is 0) is the block's
    static `deterministic` argument.
    """
    policy = remat_policy(stack.remat_policy)
    if stack.remat:
        block_cls = nn.remat(
            block_cls,
            static_argnums=(deterministic_argnum,),
            prevent_cse=not stack.scan,
            policy=policy,
        )
    if stack.jit_blocks and not stack.scan and not stack.is_initializing():
        block_cls = nn.jit(block_cls, static_argnums=(deterministic_argnum,))
    return block_cls


Array = jax.Array
Dtype = Any


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` whose scale/bias carry the logical axis ("embed",)."""

    scale_init: Callable = part(nn.initializers.ones, ("embed",))
    bias_init: Callable = part(nn.initializers.zeros, ("embed",))


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` (x / rms(x) * scale: no mean, no bias; Llama) whose scale carries the
    logical axis ("embed",)."""

    scale_init: Callable = part(nn.initializers.ones, ("embed",))


class Embed(nn.Embed):
    """`nn.Embed` whose table is gathered along "embed" before the lookup. [...] int -> [..., D].

    FSDP stores the table ("vocab", "embed") with its embed dim sharded. Looking rows up in
    it directly leaves the gradient's scatter-add to reshard the batch-sharded [B, L, D]
    updates to that embed sharding, which XLA can only do by "involuntary full
    rematerialization" (replicate, then slice) on data x fsdp meshes. Gathering the table
    first, as FSDP does for every weight, keeps the lookup and its scatter-add local to each
    batch shard, followed by one reduction; a "vocab" (tensor) sharding is kept.
    """

    def __call__(self, inputs: Array) -> Array:
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"Embed needs integer inputs, got {inputs.dtype}.")
        table = nn.with_logical_constraint(self.embedding, ("vocab", None))
        (table,) = self.promote_dtype(table, dtype=self.dtype, inexact=False)
        return jnp.take(table, inputs, axis=0)

    def attend(self, query: Array, matmul_dtype: Dtype | None = None) -> Array:
        """Tied output logits [B, T, D] -> [B, T, vocab], a precision-policy matmul."""
        (query, table) = self.promote_dtype(query, self.embedding, dtype=self.dtype)
        return precision.einsum("btd,vd->btv", query, table, matmul_dtype)


@jax.custom_jvp
def exact_gelu(x: Array) -> Array:
    """x * Phi(x) written as torch writes it, 0.5 x (1 + erf(x / sqrt 2)).

    Same values as `jax.nn.gelu(x, approximate=False)`, whose erfc form lowers on XLA:CPU to
    select-heavy fusions that cost ~8% of a ViT-S/16 train step; the erf form fuses cheaply,
    and the closed-form derivative Phi(x) + x phi(x) makes the backward one fusion
    (-8% on a [3152, 3072] GELU + matmul, forward + backward).
    """
    return x * _normal_cdf(x)


def _normal_cdf(x: Array) -> Array:
    return 0.5 * (1.0 + jax.lax.erf(x * np.asarray(2**-0.5, x.dtype)))


@exact_gelu.defjvp
def _exact_gelu_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    cdf = _normal_cdf(x)
    pdf = jnp.exp(-0.5 * x * x) * np.asarray((2 * np.pi) ** -0.5, x.dtype)
    return x * cdf, (cdf + x * pdf) * dx


def activation_fn(name: str) -> Callable[[Array], Array]:
    """'gelu' (exact erf, = torch GELU), 'gelu_tanh' (SigLIP), 'quick_gelu' (OpenAI CLIP)."""
    if name == "gelu":
        return exact_gelu
    if name == "gelu_tanh":
        return lambda x: nn.gelu(x, approximate=True)
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    raise ValueError(f"Unknown activation {name!r}: use 'gelu', 'gelu_tanh' or 'quick_gelu'.")


class MlpBlock(nn.Module):
    """Dense -> activation -> dropout -> Dense. [..., D] -> [..., D]."""

    mlp_dim: int
    activation: str = "gelu"
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None  # models/precision.py

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        width = x.shape[-1]
        h = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            dot_general=precision.dot_general(self.matmul_dtype),
            kernel_init=part(nn.initializers.xavier_uniform(), ("embed", "mlp")),
            bias_init=part(nn.initializers.normal(1e-6), ("mlp",)),
            name="fc1",
        )(x)
        h = activation_fn(self.activation)(h)
        h = constrain(h, ("batch", "length", "mlp"))
        h = nn.Dropout(self.dropout)(h, deterministic)
        return nn.Dense(
            width,
            dtype=self.dtype,
            dot_general=precision.dot_general(self.matmul_dtype),
            kernel_init=part(nn.initializers.xavier_uniform(), ("mlp", "embed")),
            bias_init=part(nn.initializers.normal(1e-6), ("embed",)),
            name="fc2",
        )(h)


class GatedMlpBlock(nn.Module):
    """SwiGLU MLP (Llama): down(silu(gate(x)) * up(x)), no biases. [..., D] -> [..., D]."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None  # models/precision.py

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        width = x.shape[-1]

        def dense(features: int, names: tuple[str, str], name: str) -> nn.Dense:
            return nn.Dense(
                features,
                use_bias=False,
                dtype=self.dtype,
                dot_general=precision.dot_general(self.matmul_dtype),
                kernel_init=part(nn.initializers.xavier_uniform(), names),
                name=name,
            )

        gate = dense(self.mlp_dim, ("embed", "mlp"), "gate")(x)
        h = nn.silu(gate) * dense(self.mlp_dim, ("embed", "mlp"), "up")(x)
        h = constrain(h, ("batch", "length", "mlp"))
        h = nn.Dropout(self.dropout)(h, deterministic)
        return dense(width, ("mlp", "embed"), "down")(h)


class EncoderBlock(nn.Module):
    """Residual attention + MLP block. [B, L, D] -> [B, L, D].

    Pre-LN (default, ViT/CLIP): x + Attn(LN(x)), then x + MLP(LN(x)). Post-LN
    (`post_norm=True`, BERT): LN(x + Attn(x)), then LN(x + MLP(x)); the norms keep their
    names, "ln_1" on the attention branch and "ln_2" on the MLP branch, so both layouts have
    the same parameter tree.

    `causal` is a field (not a call argument) so the block stays scan/remat friendly:
    the only non-array call argument is `deterministic` (positional, static for remat).
    """

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    dropout: float = 0.0
    causal: bool = False
    post_norm: bool = False
    norm_eps: float = 1e-6
    attn_implementation: str | None = None
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True) -> Array:
        names = ("batch", "length", "embed")
        ln_1 = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="ln_1")
        ln_2 = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="ln_2")
        attn = MultiHeadAttention(
            self.num_heads,
            dtype=self.dtype,
            matmul_dtype=self.matmul_dtype,
            implementation=self.attn_implementation,
            name="attn",
        )
        mlp = MlpBlock(
            self.mlp_dim,
            self.activation,
            self.dropout,
            dtype=self.dtype,
            matmul_dtype=self.matmul_dtype,
            name="mlp",
        )
        if self.post_norm:
            y = nn.Dropout(self.dropout)(attn(x, mask=mask, causal=self.causal), deterministic)
            x = constrain(ln_1(x + y), names)
            y = nn.Dropout(self.dropout)(mlp(x, deterministic), deterministic)
            return constrain(ln_2(x + y), names)
        y = nn.Dropout(self.dropout)(attn(ln_1(x), mask=mask, causal=self.causal), deterministic)
        x = constrain(x + y, names)
        y = nn.Dropout(self.dropout)(mlp(ln_2(x), deterministic), deterministic)
        return constrain(x + y, names)


class Encoder(nn.Module):
    """A stack of `EncoderBlock`s plus an optional final LayerNorm.

    `post_norm=True` stacks post-LN blocks, whose output is already normalised: it needs
    `final_norm=False` (a ValueError otherwise, rather than a silently extra norm).

    Parameters: unscanned, blocks are "block_0" ... "block_{depth-1}"; with `scan=True`
    one "blocks" subtree holds every leaf stacked along a leading `layers` axis (stack
    the per-layer leaves along axis 0 to convert). `remat` recomputes each block's
    activations in the backward pass; `jit_blocks` traces one block for every layer (see
    `repeated_block`). Final norm: "encoder_norm".
    """

    depth: int
    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    dropout: float = 0.0
    causal: bool = False
    scan: bool = False
    remat: bool = False
    remat_policy: str = "full"
    jit_blocks: bool = True  # trace one block for all layers (`repeated_block`)
    final_norm: bool = True
    post_norm: bool = False
    norm_eps: float = 1e-6
    attn_implementation: str | None = None
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(
        self, x: Array, mask: Array | None = None, *, train: bool = False
    ) -> tuple[Array, dict[str, Any]]:
        """x: [B, L, D]; mask: bool broadcastable to [B, H, L, L].

        Returns ([B, L, D], aux); aux["block_outputs"] lists each block's [B, L, D]
        output (unscanned only: a scan would have to stack them in memory).
        """
        if self.post_norm and self.final_norm:
            raise ValueError(
                "post_norm=True blocks end in a LayerNorm already: set final_norm=False."
            )
        # argnum 3 = `deterministic` (self is 0): static so dropout can branch on it.
        block_cls = repeated_block(EncoderBlock, self, deterministic_argnum=3)
        kwargs = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dropout=self.dropout,
            causal=self.causal,
            post_norm=self.post_norm,
            norm_eps=self.norm_eps,
            attn_implementation=self.attn_implementation,
            dtype=self.dtype,
            matmul_dtype=self.matmul_dtype,
        )
        aux: dict[str, Any] = {}
        x = constrain(x, ("batch", "length", "embed"))
        if self.scan:

            def body(block: nn.Module, carry: Array, _: None) -> tuple[Array, None]:
                return block(carry, mask, not train), None

            x, _ = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
            )(block_cls(**kwargs, name="blocks"), x, None)
        else:
            outputs = []
            for i in range(self.depth):
                x = block_cls(**kwargs, name=f"block_{i}")(x, mask, not train)
                outputs.append(x)
            aux["block_outputs"] = outputs
        if self.final_norm:
            x = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="encoder_norm")(x)
        return x, aux


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over tokens. [B, L, D] -> [B, D]."""

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    norm_eps: float = 1e-6
    attn_implementation: str | None = None
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        """x: [B, L, D]; mask: optional bool key mask [B, L] (True = real token)."""
        b, _, d = x.shape
        probe = self.param(
            "probe", part(nn.initializers.xavier_uniform(), (None, None, "embed")), (1, 1, d)
        )
        probe = jnp.broadcast_to(probe.astype(x.dtype), (b, 1, d))
        attn_mask = None if mask is None else mask[:, None, None, :]
        y = MultiHeadAttention(
            self.num_heads,
            dtype=self.dtype,
            matmul_dtype=self.matmul_dtype,
            implementation=self.attn_implementation,
            name="attn",
        )(probe, x, mask=attn_mask)
        z = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="ln")(y)
        mlp = MlpBlock(
            self.mlp_dim,
            self.activation,
            dtype=self.dtype,
            matmul_dtype=self.matmul_dtype,
            name="mlp",
        )
        y = y + mlp(z)
        return y[:, 0]


def dense_head(
    features: int,
    use_bias: bool,
    zero_init: bool,
    dtype: Dtype,
    name: str = "head",
    matmul_dtype: Dtype | None = None,
) -> nn.Dense:
    """Final classifier/projection Dense, kernel axes ("embed", None). Zero init suits a
    classifier trained from scratch; a projection feeding a normalised embedding must not
    start at zero (the normalisation would have no gradient direction)."""
    kernel_init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        dot_general=precision.dot_general(matmul_dtype),
        kernel_init=part(kernel_init, ("embed", None)),
        bias_init=part(nn.initializers.zeros, (None,)),
        name=name,
    )


def sincos_1d(length: int, width: int, temperature: float = 10_000.0) -> Array:
    """Transformer sinusoidal embedding [1, length, width]: [sin(p*w_i) | cos(p*w_i)],
    w_i = temperature ** (-i / (width/2 - 1)) for i < width/2."""
    if width % 2:
        raise ValueError(f"sincos_1d needs an even width, got {width}.")
    omega = _frequencies(width // 2, temperature)
    angles = np.arange(length, dtype=np.float64)[:, None] * omega[None]
    return jnp.asarray(np.concatenate([np.sin(angles), np.cos(angles)], 1)[None], jnp.float32)


def sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> Array:
    """2-D sinusoidal embedding of an h x w grid in row-major order: [1, h*w, width].

    Channels are [sin(x*w_i) | cos(x*w_i) | sin(y*w_i) | cos(y*w_i)] with x the column,
    y the row and w_i = temperature ** (-i / (width/4 - 1)) for i < width/4.
    """
    if width % 4:
        raise ValueError(f"sincos_2d needs a width divisible by 4, got {width}.")
    omega = _frequencies(width // 4, temperature)
    y, x = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    ax = x.reshape(-1)[:, None] * omega[None]
    ay = y.reshape(-1)[:, None] * omega[None]
    emb = np.concatenate([np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay)], axis=1)
    return jnp.asarray(emb[None], jnp.float32)


def _frequencies(n: int, temperature: float) -> np.ndarray:
    """n geometric frequencies from 1 down to 1/temperature (float64, computed once)."""
    exponent = np.arange(n, dtype=np.float64) / max(n - 1, 1)
    return 1.0 / temperature**exponent
