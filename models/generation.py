"""Autoregressive decoding for every generative objective: greedy, sampling, beam search.

The objective supplies two functions (e.g. `models.decoder.decoding_fns` for a KV-cached
`Decoder`, or `full_forward_fns` for the no-cache reference):

    prefill(prompts [B, P] int, lengths [B] int) -> (logits [B, V] of each prompt's next
        token, state)
    step(tokens [B] int, state) -> (logits [B, V] of the token after `tokens`, state)

Prompts are right-padded; lengths >= 1. `state` is any pytree whose leaves lead with the batch
dimension B, except scalars (e.g. a cache's shared write index), which are shared by all rows:
beam search repeats and reorders the rows. Every function here is jittable (wrap it in
`jax.jit` with the functions closed over) and returns (tokens [B, N] int, scores [B] float32):
N = max_new_tokens, a sequence stops at its first EOS (kept) and is padded with pad_id after.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
PrefillFn = Callable[[Array, Array], tuple[Array, Any]]
StepFn = Callable[[Array, Any], tuple[Array, Any]]
PickFn = Callable[[Array, Array], Array]  # (logits [B, V], step i) -> tokens [B]

MODES = ("greedy", "beam", "sample")


def _repeat_rows(state: Any, times: int) -> Any:
    """Each row (leading index) repeated `times` times in place: [B, ...] -> [B * times, ...]."""
    return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, times, axis=0), state)


def _take_rows(state: Any, rows: Array) -> Any:
    return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, rows, axis=0), state)


def _loop(
    prefill: PrefillFn,
    step: StepFn,
    prompts: Array,
    lengths: Array,
    pick: PickFn,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int,
) -> tuple[Array, Array]:
    """One token per example per step, chosen by `pick`; scores = summed model log-probs."""
    logits, state = prefill(prompts, lengths)
    batch = logits.shape[0]
    tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    if max_new_tokens == 0:
        return tokens, jnp.zeros((batch,), jnp.float32)

    def choose(i, logits, tokens, scores, done):
        token = jnp.where(done, pad_id, pick(logits, i).astype(jnp.int32))
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        scores = scores + jnp.where(done, 0.0, jnp.take_along_axis(logp, token[:, None], 1)[:, 0])
        if eos_id is not None:
            done = done | (token == eos_id)
        return token, tokens.at[:, i].set(token), scores, done

    zeros = jnp.zeros((batch,), jnp.float32)
    first = choose(0, logits, tokens, zeros, jnp.zeros((batch,), bool))
    carry = (jnp.asarray(1), *first, state)

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, tokens, scores, done, state = carry
        logits, state = step(token, state)
        return (i + 1, *choose(i, logits, tokens, scores, done), state)

    _, _, tokens, scores, _, _ = jax.lax.while_loop(cond, body, carry)
    return tokens, scores


def greedy(
    prefill: PrefillFn,
    step: StepFn,
    prompts: Array,
    lengths: Array,
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int = 0,
) -> tuple[Array, Array]:
    """Argmax decoding. Returns (tokens [B, N], scores [B]: summed log-probs)."""
    pick = lambda logits, i: jnp.argmax(logits, axis=-1)  # noqa: E731
    return _loop(prefill, step, prompts, lengths, pick, max_new_tokens, eos_id, pad_id)


def filter_logits(logits: Array, top_k: int | None = None, top_p: float | None = None) -> Array:
    """Top-k, then top-p (nucleus) filtering: removed tokens get -inf. [B, V] -> [B, V].

    top_k keeps the k largest logits (ties with the k-th kept too); top_p keeps the smallest
    set of most likely tokens whose probability reaches top_p (always at least one).
    None, 0 (top_k) or 1.0 (top_p) switch a filter off.
    """
    logits = logits.astype(jnp.float32)
    if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # A token is kept while the mass before it is below top_p: the first always is.
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def sample(
    prefill: PrefillFn,
    step: StepFn,
    prompts: Array,
    lengths: Array,
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int = 0,
    rng: Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> tuple[Array, Array]:
    """Ancestral sampling from softmax(logits / temperature), filtered by `filter_logits`.

    temperature 0 is greedy. Step i draws with `jax.random.fold_in(rng, i)`: a fixed rng
    reproduces the tokens. Scores sum the unfiltered, untempered model log-probs.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if temperature == 0:
        common = dict(max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)
        return greedy(prefill, step, prompts, lengths, **common)

    def pick(logits: Array, i: Array) -> Array:
        filtered = filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p)
        return jax.random.categorical(jax.random.fold_in(rng, i), filtered, axis=-1)

    return _loop(prefill, step, prompts, lengths, pick, max_new_tokens, eos_id, pad_id)


def length_penalty_gnmt(length: Array | int, alpha: float) -> Array:
    """GNMT's length normaliser ((5 + length) / 6) ** alpha (Wu et al. 2016); alpha 0 -> 1."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def beam_search(
    prefill: PrefillFn,
    step: StepFn,
    prompts: Array,
    lengths: Array,
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int = 0,
    num_beams: int,
    length_penalty: float = 0.0,
) -> tuple[Array, Array]:
    """Beam search; returns each example's best finished sequence and its score.

    Score of a finished sequence: its summed log-prob / `length_penalty_gnmt(len, alpha)` with
    alpha = `length_penalty` and len the number of generated tokens, EOS included. A sequence
    finishes at EOS or at max_new_tokens. Each step extends the `num_beams` best unfinished
    prefixes by every token: their EOS extensions compete for the best finished sequence (all
    of them, not only those in the top beams), the best `num_beams` others stay alive. The
    search stops early once no alive prefix can beat the best finished sequence (exact for
    any alpha, log-probs only fall). With num_beams >= (V - 1) ** (N - 1) it is exhaustive.

    Returns (tokens [B, N], scores [B]).
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}.")
    beams, steps = num_beams, max_new_tokens
    logits, state = prefill(prompts, lengths)
    batch, vocab = logits.shape
    if steps == 0:
        return jnp.full((batch, 0), pad_id, jnp.int32), jnp.zeros((batch,), jnp.float32)
    penalty = lambda n: length_penalty_gnmt(n, length_penalty)  # noqa: E731
    offsets = (jnp.arange(batch) * beams)[:, None]

    def select(i, logits, alive_logp, alive_seq, best_seq, best_score):
        """Extends the alive beams ([B, K] log-probs, [B, K, N] tokens) by step i's logits."""
        logp = jax.nn.log_softmax(logits.astype(jnp.float32).reshape(batch, beams, vocab), -1)
        cand = alive_logp[..., None] + logp  # [B, K, V]
        if eos_id is not None:
            scores = cand[..., eos_id] / penalty(i + 1)
            k = jnp.argmax(scores, axis=1)
            seq = jnp.take_along_axis(alive_seq, k[:, None, None], 1)[:, 0].at[:, i].set(eos_id)
            score = jnp.max(scores, axis=1)
            better = score > best_score
            best_seq = jnp.where(better[:, None], seq, best_seq)
            best_score = jnp.where(better, score, best_score)
            cand = cand.at[..., eos_id].set(-jnp.inf)
        alive_logp, flat = jax.lax.top_k(cand.reshape(batch, beams * vocab), beams)
        parents, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        alive_seq = jnp.take_along_axis(alive_seq, parents[..., None], 1).at[:, :, i].set(token)
        # At max length the best alive beam (top_k sorts: beam 0) is finished too.
        score = jnp.where(i == steps - 1, alive_logp[:, 0] / penalty(steps), -jnp.inf)
        better = score > best_score
        best_seq = jnp.where(better[:, None], alive_seq[:, 0], best_seq)
        best_score = jnp.where(better, score, best_score)
        rows = (parents + offsets).reshape(-1)
        return rows, token.reshape(-1), alive_logp, alive_seq, (best_seq, best_score)

    # All beams start as copies of the prompt; only beam 0 is live, so step 0 picks distinct
    # tokens.
    alive_logp = jnp.tile(jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf), (batch, 1))
    alive_seq = jnp.full((batch, beams, steps), pad_id, jnp.int32)
    best = (jnp.full((batch, steps), pad_id, jnp.int32), jnp.full((batch,), -jnp.inf))
    logits = jnp.repeat(logits, beams, axis=0)
    first = select(0, logits, alive_logp, alive_seq, *best)
    carry = (jnp.asarray(1), *first, _repeat_rows(state, beams))

    def cond(carry):
        i, _, _, alive_logp, _, (_, best_score), _ = carry
        # An alive prefix's best possible final score: its log-prob (which only falls) over
        # the largest length normaliser it could still reach.
        bound = alive_logp[:, 0] / jnp.maximum(penalty(i + 1), penalty(steps))
        return (i < steps) & ~jnp.all(best_score >= bound)

    def body(carry):
        i, rows, token, alive_logp, alive_seq, best, state = carry
        logits, state = step(token, _take_rows(state, rows))
        return (i + 1, *select(i, logits, alive_logp, alive_seq, *best), state)

    *_, (best_seq, best_score), _ = jax.lax.while_loop(cond, body, carry)
    return best_seq, best_score


def parse_mode(mode: str) -> tuple[str, dict[str, Any]]:
    """Parses a decoding mode into (name, keyword arguments of its function).

    Modes: "greedy", "beam:K[,length_penalty=A]" and
    "sample[:temperature=T,top_k=K,top_p=P,seed=S]" (any subset, any order). Raises
    ValueError for unknown modes, unknown parameters and malformed values.
    """
    name, _, params = mode.partition(":")
    if name not in MODES:
        raise ValueError(f"Unknown decoding mode {mode!r}: use one of {MODES}.")
    items = [p for p in params.split(",") if p] if params else []
    if name == "greedy":
        if items:
            raise ValueError(f"Decoding mode 'greedy' takes no parameters, got {mode!r}.")
        return name, {}
    kwargs: dict[str, Any] = {}
    if name == "beam":
        if not items or not items[0].isdigit() or int(items[0]) < 1:
            raise ValueError(f"Beam mode needs a beam count 'beam:K' (K >= 1), got {mode!r}.")
        kwargs["num_beams"] = int(items.pop(0))
    casts = {"beam": {"length_penalty": float}}.get(
        name, {"temperature": float, "top_k": int, "top_p": float, "seed": int}
    )
    for item in items:
        key, eq, value = item.partition("=")
        if key in casts and not eq:
            raise ValueError(f"Parameter {key!r} needs a value ({key}=...) in mode {mode!r}.")
        if key not in casts:
            raise ValueError(
                f"Unknown parameter {key!r} in decoding mode {mode!r}: {name} takes "
                f"{', '.join(f'{k}=' for k in casts)}."
            )
        try:
            kwargs[key] = casts[key](value)
        except ValueError:
            raise ValueError(f"Bad value {value!r} for {key} in decoding mode {mode!r}.") from None
    return name, kwargs


def decode(
    mode: str,
    prefill: PrefillFn,
    step: StepFn,
    prompts: Array,
    lengths: Array,
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int = 0,
) -> tuple[Array, Array]:
    """Dispatches on a mode string (see `parse_mode`) to greedy, beam_search or sample."""
    name, kwargs = parse_mode(mode)
    common = dict(max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)
    if name == "greedy":
        return greedy(prefill, step, prompts, lengths, **common)
    if name == "beam":
        return beam_search(prefill, step, prompts, lengths, **common, **kwargs)
    rng = jax.random.key(kwargs.pop("seed", 0))
    return sample(prefill, step, prompts, lengths, **common, rng=rng, **kwargs)


def full_forward_fns(
    logits_fn: Callable[[Array, Array, Any], Array], max_new_tokens: int, extras: Any = None
) -> tuple[PrefillFn, StepFn]:
    """No-cache reference prefill/step: every call re-runs the whole forward pass.

    logits_fn(tokens [B, L], attention_mask [B, L] bool, extras) -> logits [B, L, V], with
    L = P + max_new_tokens. The state holds each example's sequence contiguously (prompt, then
    the generated tokens; padding only after), its length and `extras`, a pytree of per-example
    inputs [B, ...] (memory, prefix lengths) that beam search repeats and reorders with it.
    """

    def logits_at_end(state: dict[str, Any]) -> Array:
        tokens, lengths = state["tokens"], state["lengths"]
        valid = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
        logits = logits_fn(tokens, valid, state["extras"])
        return jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]

    def prefill(prompts: Array, lengths: Array) -> tuple[Array, dict[str, Any]]:
        tokens = jnp.pad(prompts, ((0, 0), (0, max_new_tokens)))
        state = {"tokens": tokens, "lengths": lengths, "extras": extras}
        return logits_at_end(state), state

    def step(token: Array, state: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
        rows = jnp.arange(token.shape[0])
        tokens = state["tokens"].at[rows, state["lengths"]].set(token)
        state = dict(state, tokens=tokens, lengths=state["lengths"] + 1)
        return logits_at_end(state), state

    return prefill, step
