"""Transformer decoder (causal or prefix LM) over token ids, with a KV cache for decoding.

Configurations of note:
  * GPT-2 style (the defaults): `norm_type="layernorm"`, `mlp_type="gelu"`, `posemb="learn"`,
    biases everywhere, tied embeddings.
  * Llama / SmolLM2 (HF `LlamaForCausalLM`): `norm_type="rmsnorm"`, `norm_eps=1e-5`,
    `mlp_type="swiglu"`, `posemb="rope"`, `rope_base` (1e5 for SmolLM2), `num_kv_heads` <
    `num_heads` (grouped-query attention), `attn_bias=False`, `tie_embeddings=True`.
  * Encoder-decoder (SimVLM's image encoder feeding the text decoder): `cross_attention=True`,
    `memory` [B, M, Dm] from the encoder; each layer's key/value projections read Dm directly.

Parameter tree: "token_embedding", "pos_embedding" (posemb "learn"), "block_0" ...
"block_{depth-1}" (or one "blocks" stacked along a leading `layers` axis with `scan=True`),
each with "ln_1", "attn" (query/key/value/out), "ln_cross" + "cross_attn" (cross_attention),
"ln_2", "mlp" (fc1/fc2, or gate/up/down for swiglu); "decoder_norm"; "lm_head" (untied only).

KV cache (`Decoder.init_cache`), a dict of arrays with the batch leading wherever there is one:
    "index":  int32 []              the next slot to write (shared by the batch)
    "valid":  bool [B, S]           slots holding a real key (False: unwritten or padding)
    "k", "v": [B, depth, Hkv, S, hd] self-attention keys (rotated with rope) and values,
                                    head-major so a decoding step reads them in place
    "cross_k", "cross_v": [B, depth, Hkv, M, hd], "memory_valid": bool [B, M]
                                    (cross_attention only) written once, from `memory`
A call with a cache writes its T tokens at slots index .. index+T-1 and attends over all valid
slots up to its own; token positions (posemb, rope) are per example, so right-padded prompts of
different lengths share one cache: pad slots stay invalid and each example's next positions
continue from its own length (see `decoding_fns`).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers, precision
from models.decoder_block import DecoderBlock, decoder_mask, norm_layer
from models.variants import decode_variant

Array = jax.Array

MLP_TYPES = ("gelu", "swiglu")
NORM_TYPES = ("layernorm", "rmsnorm")
POSEMB_TYPES = ("learn", "rope", "none")
SIZE_FIELDS = ("width", "depth", "mlp_dim", "num_heads")


class Decoder(nn.Module):
    """Token ids [B, T] -> (logits [B, T, V], aux). See the module docstring for options.

    `variant` ("B", "mu", ...) overrides width/depth/mlp_dim/num_heads. `num_kv_heads`
    defaults to num_heads, `head_dim` to width // num_heads. `attn_bias` sets the attention
    projections' biases; the "gelu" MLP always has biases, the "swiglu" one never. Tokens equal
    to `pad_id` (when set and no `attention_mask` is given) are never attended.
    """

    variant: str | None = None
    vocab_size: int = 32000
    width: int = 512
    depth: int = 8
    mlp_dim: int = 2048
    num_heads: int = 8
    num_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_type: str = "gelu"
    activation: str = "gelu"
    norm_type: str = "layernorm"
    norm_eps: float = 1e-6
    attn_bias: bool = True
    posemb: str = "learn"
    rope_base: float = 10_000.0
    max_len: int = 512
    tie_embeddings: bool = True
    cross_attention: bool = False
    pad_id: int | None = None
    dropout: float = 0.0
    scan: bool = False
    remat: bool = False
    remat_policy: str = "full"  # with remat: what each block keeps (layers.REMAT_POLICIES)
    jit_blocks: bool = True  # trace one block for every layer (layers.repeated_block)
    dtype: Any = jnp.float32  # activations (models/precision.py)
    matmul_dtype: Any = None  # matmul inputs (None: dtype), float32 accumulation
    attn_implementation: str | None = None

    def config(self) -> dict[str, int]:
        """Effective sizes: width, depth, mlp_dim, num_heads (after `variant`), num_kv_heads,
        head_dim. Raises ValueError for inconsistent sizes or unknown option strings."""
        cfg = {name: getattr(self, name) for name in SIZE_FIELDS}
        if self.variant is not None:
            decoded = decode_variant(self.variant)
            if "patch_size" in decoded:
                raise ValueError(f"Decoder variant {self.variant!r} cannot name a patch size.")
            cfg.update(decoded)
        cfg["num_kv_heads"] = self.num_kv_heads or cfg["num_heads"]
        if cfg["num_heads"] % cfg["num_kv_heads"]:
            raise ValueError(
                f"num_kv_heads {cfg['num_kv_heads']} does not divide num_heads {cfg['num_heads']}."
            )
        if self.head_dim is None and cfg["width"] % cfg["num_heads"]:
            raise ValueError(f"width {cfg['width']} is not divisible by {cfg['num_heads']} heads.")
        cfg["head_dim"] = self.head_dim or cfg["width"] // cfg["num_heads"]
        for value, valid, what in (
            (self.mlp_type, MLP_TYPES, "mlp_type"),
            (self.norm_type, NORM_TYPES, "norm_type"),
            (self.posemb, POSEMB_TYPES, "posemb"),
        ):
            if value not in valid:
                raise ValueError(f"Unknown {what} {value!r}: use one of {valid}.")
        return cfg

    def init_cache(
        self, batch_size: int, max_len: int, memory_len: int | None = None
    ) -> dict[str, Array]:
        """An empty KV cache of `max_len` slots (layout in the module docstring).

        `memory_len` (M, the encoder memory's length) is required with cross_attention.
        Callable on the unbound module: `Decoder(...).init_cache(B, S)`.
        """
        cfg = self.config()
        kv_shape = (batch_size, cfg["depth"], cfg["num_kv_heads"], max_len, cfg["head_dim"])
        cache = {
            "index": jnp.zeros((), jnp.int32),
            "valid": jnp.zeros((batch_size, max_len), bool),
            "k": jnp.zeros(kv_shape, self.dtype),
            "v": jnp.zeros(kv_shape, self.dtype),
        }
        if self.cross_attention:
            if memory_len is None:
                raise ValueError("A cross-attention decoder's cache needs memory_len.")
            cross_shape = (*kv_shape[:3], memory_len, kv_shape[4])
            cache["cross_k"] = jnp.zeros(cross_shape, self.dtype)
            cache["cross_v"] = jnp.zeros(cross_shape, self.dtype)
            cache["memory_valid"] = jnp.zeros((batch_size, memory_len), bool)
        return cache

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        *,
        positions: Array | None = None,
        attention_mask: Array | None = None,
        memory: Array | None = None,
        memory_mask: Array | None = None,
        cache: dict[str, Array] | None = None,
        prefix_len: Array | None = None,
        prefix_embeddings: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, dict[str, Any]]:
        """Runs the decoder over T new tokens (all of them, or the next ones given a cache).

        Args:
          tokens: [B, T] int.
          positions: [B, T] int token positions (posemb, rope); default: slot numbers
            (0 .. T-1, or the cache's index onwards).
          attention_mask: [B, T] bool, False = padding, never attended (as a key); default:
            tokens != pad_id, or all True.
          memory: [B, M, Dm] encoder output for cross_attention (with a cache: prefill only).
          memory_mask: [B, M] bool, False = memory padding.
          cache: from `init_cache` or a previous call's aux["cache"].
          prefix_len: [B] int, prefix-LM mask: slots below it attend bidirectionally among
            themselves (with a cache, the whole prefix must be in one call).
          prefix_embeddings: [B, E, D] inputs placed before the token embeddings (visual
            prefixes: Frozen, ClipCap). Then T counts E + tokens for logits, positions,
            attention_mask (default: prefix valid) and prefix_len.
          train: enables dropout.

        Returns:
          (logits [B, T, V], aux): aux["hidden"] the final-normed hidden states [B, T, D];
          aux["cache"] the updated cache when one was given.
        """
        cfg = self.config()
        embed = layers.Embed(
            self.vocab_size,
            cfg["width"],
            dtype=self.dtype,
            embedding_init=layers.part(nn.initializers.normal(0.02), ("vocab", "embed")),
            name="token_embedding",
        )
        x = embed(tokens)
        key_valid = jnp.ones(tokens.shape, bool)
        if self.pad_id is not None:
            key_valid = tokens != self.pad_id
        if prefix_embeddings is not None:
            x = jnp.concatenate([prefix_embeddings.astype(x.dtype), x], axis=1)
            key_valid = jnp.pad(
                key_valid, ((0, 0), (prefix_embeddings.shape[1], 0)), constant_values=True
            )
        if attention_mask is not None:
            key_valid = attention_mask.astype(bool)
        batch, length = x.shape[:2]

        index = jnp.zeros((), jnp.int32) if cache is None else cache["index"]
        slots = index + jnp.arange(length)
        if positions is None:
            positions = jnp.broadcast_to(slots, (batch, length))
        keys_len = length if cache is None else cache["valid"].shape[1]
        if self.posemb == "learn":
            if keys_len > self.max_len:
                raise ValueError(
                    f"{keys_len} {'cache slots' if cache is not None else 'tokens'} exceed max_len="
                    f"{self.max_len} of the learned position embedding."
                )
            table = self.param(
                "pos_embedding",
                layers.part(nn.initializers.normal(0.01), ("length", "embed")),
                (self.max_len, cfg["width"]),
            )
            x = x + jnp.take(table, positions, axis=0).astype(x.dtype)
        x = layers.constrain(x, ("batch", "length", "embed"))
        x = nn.Dropout(self.dropout)(x, not train)

        if cache is not None:
            key_valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], key_valid, index, 1)
        mask = decoder_mask(slots, jnp.arange(keys_len), key_valid, prefix_len)
        ctx = {"positions": positions, "mask": mask, "index": index, "memory": memory}
        ctx["memory_mask"], memory_valid = self._memory_mask(memory, memory_mask, cache, batch)

        x, new = self._blocks(cfg, x, ctx, cache, train)
        x = norm_layer(self.norm_type, self.norm_eps, self.dtype, "decoder_norm")(x)
        if self.tie_embeddings:
            logits = embed.attend(x, matmul_dtype=self.matmul_dtype)
        else:
            logits = nn.Dense(
                self.vocab_size,
                use_bias=False,
                dtype=self.dtype,
                dot_general=precision.dot_general(self.matmul_dtype),
                kernel_init=layers.part(nn.initializers.normal(0.02), ("embed", "vocab")),
                name="lm_head",
            )(x)
        aux: dict[str, Any] = {"hidden": x}
        if cache is not None:
            aux["cache"] = self._updated_cache(cache, new, key_valid, memory_valid, length)
        return layers.constrain(logits, ("batch", "length", "vocab")), aux

    def _memory_mask(
        self, memory: Array | None, memory_mask: Array | None, cache: dict | None, batch: int
    ) -> tuple[Array | None, Array | None]:
        """(cross-attention mask [B, 1, 1, M], memory validity [B, M] to cache), or Nones."""
        if not self.cross_attention:
            if memory is not None:
                raise ValueError("memory was given to a decoder without cross_attention.")
            return None, None
        if memory is not None:
            valid = jnp.ones(memory.shape[:2], bool) if memory_mask is None else memory_mask
        elif cache is not None and memory_mask is None:
            valid = cache["memory_valid"]
        else:
            raise ValueError(
                "cross_attention needs memory (and memory_mask with it), or a cache filled "
                "from memory at prefill."
            )
        valid = jnp.broadcast_to(valid.astype(bool), (batch, valid.shape[-1]))
        return valid[:, None, None, :], valid

    def _blocks(
        self,
        cfg: dict[str, int],
        x: Array,
        ctx: dict[str, Any],
        cache: dict[str, Array] | None,
        train: bool,
    ) -> tuple[Array, dict[str, Array]]:
        """Runs the layers; returns (x, new keys/values stacked along axis 1, [B, depth, ...])."""
        depth = cfg["depth"]
        if cache is not None and cache["k"].shape[1] != depth:
            raise ValueError(f"The cache has {cache['k'].shape[1]} layers, the decoder {depth}.")
        # argnum 4 = `deterministic` (self is 0): static so dropout can branch on it.
        block_cls = layers.repeated_block(DecoderBlock, self, deterministic_argnum=4)
        kwargs = dict(
            num_heads=cfg["num_heads"],
            num_kv_heads=cfg["num_kv_heads"],
            head_dim=cfg["head_dim"],
            mlp_dim=cfg["mlp_dim"],
            mlp_type=self.mlp_type,
            activation=self.activation,
            norm_type=self.norm_type,
            norm_eps=self.norm_eps,
            attn_bias=self.attn_bias,
            rope_base=self.rope_base if self.posemb == "rope" else None,
            cross_attention=self.cross_attention,
            dropout=self.dropout,
            attn_implementation=self.attn_implementation,
            dtype=self.dtype,
            matmul_dtype=self.matmul_dtype,
        )

        def layer_cache(cache: dict[str, Array] | None, i: Array | int) -> dict | None:
            if cache is None:
                return None
            return {
                name: jax.lax.dynamic_index_in_dim(cache[name], i, axis=1, keepdims=False)
                for name in ("k", "v", "cross_k", "cross_v")
                if name in cache
            }

        if self.scan:

            def body(block: nn.Module, carry: Array, i: Array, ctx: dict, cache: dict | None):
                return block(carry, ctx, layer_cache(cache, i), not train)

            x, new = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast),
                length=depth,
                metadata_params={nn.PARTITION_NAME: layers.LAYERS_AXIS},
            )(block_cls(**kwargs, name="blocks"), x, jnp.arange(depth), ctx, cache)
            return x, jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), new)
        news = []
        for i in range(depth):
            x, new = block_cls(**kwargs, name=f"block_{i}")(
                x, ctx, layer_cache(cache, i), not train
            )
            news.append(new)
        return x, jax.tree.map(lambda *a: jnp.stack(a, axis=1), *news)

    def _updated_cache(
        self,
        cache: dict[str, Array],
        new: dict[str, Array],
        key_valid: Array,
        memory_valid: Array | None,
        length: int,
    ) -> dict[str, Array]:
        """The cache after writing `length` tokens' keys/values at its index."""
        index = cache["index"]
        out = dict(cache, index=index + length, valid=key_valid)
        for name in ("k", "v"):
            rows = new[name].astype(cache[name].dtype)
            out[name] = jax.lax.dynamic_update_slice_in_dim(cache[name], rows, index, axis=3)
        if "cross_k" in new:
            for name in ("cross_k", "cross_v"):
                if new[name].shape != cache[name].shape:
                    raise ValueError(
                        f"memory gives {name} of shape {new[name].shape}, the cache holds "
                        f"{cache[name].shape}: init_cache(memory_len=) must match memory."
                    )
                out[name] = new[name].astype(cache[name].dtype)
            out["memory_valid"] = memory_valid
        for name in ("k", "v", "cross_k", "cross_v"):
            if name in out:
                out[name] = layers.constrain(out[name], ("batch", None, "heads", "length", "kv"))
        return out


PrefillFn = Callable[[Array, Array], tuple[Array, Any]]
StepFn = Callable[[Array, Any], tuple[Array, Any]]


def decoding_fns(
    model: Decoder,
    variables: Any,
    *,
    max_new_tokens: int,
    memory: Array | None = None,
    memory_mask: Array | None = None,
    prefix_embeddings: Array | None = None,
    prefix_lm: bool = False,
) -> tuple[PrefillFn, StepFn]:
    """KV-cache `prefill` and `step` functions for `models.generation`.

    prefill(prompts [B, P] int, right-padded; lengths [B] int >= 1) -> (logits [B, V] for the
    token after each prompt, state); step(tokens [B] int, state) -> (logits [B, V], state).
    state = {"cache": the decoder cache of E + P + max_new_tokens slots, "positions": [B] int,
    each example's next position}; every leaf but the cache's scalar "index" leads with B.

    memory [B, M, Dm] / memory_mask [B, M]: cross-attention inputs, used at prefill only.
    prefix_embeddings [B, E, D]: placed before every prompt. prefix_lm: the prefix and each
    prompt attend bidirectionally (SimVLM), generated tokens causally.
    """
    num_prefix = 0 if prefix_embeddings is None else prefix_embeddings.shape[1]

    def prefill(prompts: Array, lengths: Array) -> tuple[Array, dict[str, Any]]:
        batch, prompt_len = prompts.shape
        memory_len = None if memory is None else memory.shape[1]
        cache = model.init_cache(batch, num_prefix + prompt_len + max_new_tokens, memory_len)
        valid = jnp.arange(prompt_len)[None, :] < lengths[:, None]
        valid = jnp.pad(valid, ((0, 0), (num_prefix, 0)), constant_values=True)
        ends = num_prefix + lengths
        logits, aux = model.apply(
            variables,
            prompts,
            attention_mask=valid,
            memory=memory,
            memory_mask=memory_mask,
            cache=cache,
            prefix_len=ends if prefix_lm else None,
            prefix_embeddings=prefix_embeddings,
        )
        last = jnp.take_along_axis(logits, (ends - 1)[:, None, None], axis=1)[:, 0]
        return last, {"cache": aux["cache"], "positions": ends}

    def step(tokens: Array, state: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
        positions = state["positions"]
        logits, aux = model.apply(
            variables,
            tokens[:, None],
            positions=positions[:, None],
            attention_mask=jnp.ones((tokens.shape[0], 1), bool),
            cache=state["cache"],
        )
        return logits[:, 0], {"cache": aux["cache"], "positions": positions + 1}

    return prefill, step
