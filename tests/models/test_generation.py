"""Tests for models/generation.py: greedy, sampling and beam search on a deterministic toy model
(beam search against brute-force enumeration) and on a KV-cached Decoder against the no-cache
reference."""

import hashlib
import itertools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decoder, generation
from tests.models.test_layers import random_params

# PAD lies outside the toy vocabulary so that padding is never mistaken for a token.
V, HIDDEN, EOS, PAD = 4, 8, 3, 4
COMMON = dict(eos_id=EOS, pad_id=PAD)


def toy_fns(seed=0, vocab=V, eos_bias=0.5):
    """A deterministic recurrent toy LM: h' = tanh(h W + E[token]), logits = h U.

    Its state carries the hidden state [B, H] (which depends on the whole history, so beam
    search must reorder it), a per-row step count [B] and a shared scalar.
    """
    rng = np.random.default_rng(seed)
    emb = jnp.asarray(rng.normal(size=(vocab, HIDDEN)), jnp.float32)
    w = jnp.asarray(0.7 * rng.normal(size=(HIDDEN, HIDDEN)), jnp.float32)
    u = jnp.asarray(1.5 * rng.normal(size=(HIDDEN, vocab)), jnp.float32)
    u = u.at[:, EOS % vocab].add(eos_bias)
    advance = lambda h, tok: jnp.tanh(h @ w + emb[tok])  # noqa: E731

    def prefill(prompts, lengths):
        h = jnp.zeros((prompts.shape[0], HIDDEN))
        for t in range(prompts.shape[1]):
            h = jnp.where((t < lengths)[:, None], advance(h, prompts[:, t]), h)
        state = {"h": h, "steps": jnp.zeros(prompts.shape[0], jnp.int32), "shared": jnp.ones(())}
        return h @ u, state

    def step(tokens, state):
        h = advance(state["h"], tokens)
        return h @ u, dict(state, h=h, steps=state["steps"] + 1)

    return prefill, step


PROMPTS = np.array([[1, 2, 0, 0], [2, 2, 1, 0], [0, 1, 2, 1]], np.int32)
LENGTHS = np.array([2, 3, 4], np.int32)


def brute_force(prefill, step, prompt, length, steps, alpha):
    """Best (tokens, score) over all V**steps continuations, each cut at its first EOS."""
    seqs = np.array(list(itertools.product(range(V), repeat=steps)), np.int32)
    n = len(seqs)
    logits, state = prefill(jnp.tile(prompt, (n, 1)), jnp.full((n,), length))
    logps = []
    for i in range(steps):
        logp = jax.nn.log_softmax(logits, -1)
        logps.append(np.asarray(jnp.take_along_axis(logp, seqs[:, i : i + 1], 1)[:, 0]))
        logits, state = step(jnp.asarray(seqs[:, i]), state)
    logps = np.stack(logps, 1)
    best = (None, -np.inf)
    for seq, logp in zip(seqs, logps, strict=True):
        eos = np.flatnonzero(seq == EOS)
        n_tok = eos[0] + 1 if len(eos) else steps
        score = logp[:n_tok].sum() / ((5 + n_tok) / 6) ** alpha
        if score > best[1]:
            best = (np.r_[seq[:n_tok], np.full(steps - n_tok, PAD)], score)
    return best


def numpy_greedy(prefill, step, prompt, length, steps):
    logits, state = prefill(prompt[None], jnp.array([length]))
    out, score = [], 0.0
    for _ in range(steps):
        tok = int(np.argmax(logits[0]))
        score += float(jax.nn.log_softmax(logits[0])[tok])
        out.append(tok)
        if tok == EOS:
            break
        logits, state = step(jnp.array([tok]), state)
    return np.r_[out, np.full(steps - len(out), PAD)], score


def test_beam_search_matches_brute_force():
    prefill, step = toy_fns(seed=2, eos_bias=0.0)
    steps, winners = 3, {}
    for alpha in (0.0, 0.6, 3.0):
        # (V - 1) ** (steps - 1) = 9 alive prefixes: the search is exhaustive.
        run = jax.jit(
            lambda p, n, alpha=alpha: generation.beam_search(
                prefill,
                step,
                p,
                n,
                max_new_tokens=steps,
                num_beams=9,
                length_penalty=alpha,
                **COMMON,
            )
        )
        tokens, scores = run(PROMPTS, LENGTHS)
        assert tokens.shape == (3, steps) and scores.shape == (3,)
        for b in range(3):
            want, want_score = brute_force(prefill, step, PROMPTS[b], LENGTHS[b], steps, alpha)
            np.testing.assert_array_equal(tokens[b], want, err_msg=f"alpha={alpha}, row {b}")
            np.testing.assert_allclose(scores[b], want_score, rtol=1e-5)
        winners[alpha] = np.asarray(tokens)
    # The cases are not trivial: some winners stop early, some run to the limit, and the
    # length penalty changes the answer.
    lengths = np.concatenate([(w != PAD).sum(1) for w in winners.values()])
    assert lengths.min() < steps and lengths.max() == steps
    assert not np.array_equal(winners[0.0], winners[3.0])


def test_narrow_beam_is_at_least_greedy_and_the_penalty_is_gnmt():
    prefill, step = toy_fns(seed=3)
    kw = dict(max_new_tokens=5, **COMMON)
    g_tokens, g_scores = jax.jit(lambda p, n: generation.greedy(prefill, step, p, n, **kw))(
        PROMPTS, LENGTHS
    )
    b_tokens, b_scores = jax.jit(
        lambda p, n: generation.beam_search(prefill, step, p, n, num_beams=3, **kw)
    )(PROMPTS, LENGTHS)
    # With alpha 0 scores are summed log-probs: a 3-beam search finds at least greedy's.
    assert np.all(np.asarray(b_scores) >= np.asarray(g_scores) - 1e-6)
    assert np.all(np.isfinite(b_scores))
    assert (b_tokens[:, 1:][b_tokens[:, :-1] == EOS] == PAD).all()  # pad after EOS
    np.testing.assert_allclose(generation.length_penalty_gnmt(3, 0.6), (8 / 6) ** 0.6)


def test_greedy_matches_a_python_loop_with_per_example_prompts():
    prefill, step = toy_fns(seed=1)
    tokens, scores = jax.jit(
        lambda p, n: generation.greedy(prefill, step, p, n, max_new_tokens=6, **COMMON)
    )(PROMPTS, LENGTHS)
    assert tokens.shape == (3, 6)
    for b in range(3):
        # Alone and unpadded, each example decodes the same.
        want, want_score = numpy_greedy(prefill, step, PROMPTS[b, : LENGTHS[b]], LENGTHS[b], 6)
        np.testing.assert_array_equal(tokens[b], want)
        np.testing.assert_allclose(scores[b], want_score, rtol=1e-5)


def scripted_fns(script):
    """Logits that make token script[b, i] the clear favourite at step i (the script rides in
    the state, so beam search's copies of a row keep theirs)."""

    def logits(state):
        steps, script = state["steps"], state["script"]
        tok = jnp.take_along_axis(script, jnp.minimum(steps, script.shape[1] - 1)[:, None], 1)
        return 10.0 * jax.nn.one_hot(tok[:, 0], V)

    def prefill(prompts, lengths):
        state = {"steps": jnp.zeros(prompts.shape[0], jnp.int32), "script": jnp.asarray(script)}
        return logits(state), state

    def step(tokens, state):
        state = dict(state, steps=state["steps"] + 1)
        return logits(state), state

    return prefill, step


def test_eos_stops_each_sequence_and_max_new_tokens_bounds_all():
    script = np.array([[1, EOS, 2, 2, 2], [2, 1, 1, 2, 1], [EOS, 1, 1, 1, 1]])
    prefill, step = scripted_fns(script)
    prompts, lengths = PROMPTS, LENGTHS
    for mode in ("greedy", "beam:2", "sample:temperature=0.5,seed=3"):
        tokens, scores = jax.jit(
            lambda p, n, mode=mode: generation.decode(
                mode, prefill, step, p, n, max_new_tokens=4, **COMMON
            )
        )(prompts, lengths)
        want = [[1, EOS, PAD, PAD], [2, 1, 1, 2], [EOS, PAD, PAD, PAD]]
        np.testing.assert_array_equal(tokens, want, err_msg=mode)
        assert np.all(np.isfinite(scores))
    tokens, _ = generation.greedy(prefill, step, prompts, lengths, max_new_tokens=0, **COMMON)
    assert tokens.shape == (3, 0)
    # No EOS id: always max_new_tokens tokens.
    tokens, _ = generation.greedy(prefill, step, prompts, lengths, max_new_tokens=3, eos_id=None)
    np.testing.assert_array_equal(tokens, script[:, :3])


def test_filter_logits():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1], [0.1, 0.2, 0.3, 0.4]]))
    kept = lambda f: np.isfinite(np.asarray(f))  # noqa: E731
    assert kept(generation.filter_logits(logits, top_k=2)).tolist() == [
        [True, True, False, False],
        [False, False, True, True],
    ]
    # Nucleus: the fewest tokens whose mass reaches top_p (at least one).
    assert kept(generation.filter_logits(logits, top_p=0.7)).tolist() == [
        [True, True, False, False],
        [False, False, True, True],
    ]
    assert kept(generation.filter_logits(logits, top_p=0.75)).tolist()[0] == [1, 1, 0, 0]
    assert kept(generation.filter_logits(logits, top_p=0.76)).tolist()[0] == [1, 1, 1, 0]
    assert kept(generation.filter_logits(logits, top_p=0.01)).sum(1).tolist() == [1, 1]
    # Combined: top-k first.
    assert kept(generation.filter_logits(logits, top_k=3, top_p=0.9)).tolist()[1] == [0, 1, 1, 1]
    np.testing.assert_array_equal(generation.filter_logits(logits, 0, 1.0), logits)


SAMPLES = 4000


def first_samples(seed: int, **kw) -> np.ndarray:
    """[SAMPLES] first tokens sampled after one prompt of the seed-2 toy model."""
    prefill, step = toy_fns(seed=2)
    prompts = np.tile(PROMPTS[:1], (SAMPLES, 1))
    lengths = np.full((SAMPLES,), 2, np.int32)
    fn = lambda p, n_: generation.sample(  # noqa: E731
        prefill, step, p, n_, max_new_tokens=1, rng=jax.random.key(seed), **COMMON, **kw
    )
    return np.asarray(jax.jit(fn)(prompts, lengths)[0][:, 0])


def _digest(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, np.int64).tobytes()).hexdigest()


def test_sampling_is_reproducible_and_follows_the_distribution():
    prefill, _ = toy_fns(seed=2)
    n, run = SAMPLES, first_samples
    prompts, lengths = np.tile(PROMPTS[:1], (n, 1)), np.full((n,), 2, np.int32)
    probs = np.asarray(jax.nn.softmax(prefill(prompts[:1], lengths[:1])[0][0]))
    first = run(0)
    # The draws depend on the seed alone: a fresh process (one device, its own compile)
    # samples the same tokens.
    script = (
        "import jax; jax.config.update('jax_default_matmul_precision', 'highest');"
        "from tests.models.test_generation import first_samples, _digest;"
        "print(_digest(first_samples(0)))"
    )
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == _digest(first)
    assert not np.array_equal(run(1), first)
    freq = np.bincount(first, minlength=V) / n
    np.testing.assert_allclose(freq, probs, atol=0.03)
    # Temperature 2 flattens the distribution: frequencies follow softmax(logits / 2).
    flat = np.asarray(jax.nn.softmax(prefill(prompts[:1], lengths[:1])[0][0] / 2))
    np.testing.assert_allclose(
        np.bincount(run(0, temperature=2.0), minlength=V) / n, flat, atol=0.03
    )
    # Top-k 2: only the two most likely tokens, renormalised.
    top2 = np.argsort(probs)[-2:]
    freq = np.bincount(run(0, top_k=2), minlength=V) / n
    assert set(np.flatnonzero(freq)) <= set(top2)
    np.testing.assert_allclose(freq[top2], probs[top2] / probs[top2].sum(), atol=0.03)
    greedy_token = np.argmax(probs)
    assert set(run(0, temperature=0.0)) == {greedy_token}
    assert set(run(5, top_p=1e-3)) == {greedy_token}


def test_temperature_zero_and_top_k_one_are_greedy():
    prefill, step = toy_fns(seed=4)
    kw = dict(max_new_tokens=5, **COMMON)
    want = generation.greedy(prefill, step, PROMPTS, LENGTHS, **kw)
    for extra in (dict(temperature=0.0), dict(top_k=1)):
        got = generation.sample(
            prefill, step, PROMPTS, LENGTHS, rng=jax.random.key(0), **kw, **extra
        )
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_parse_mode_and_errors():
    assert generation.parse_mode("greedy") == ("greedy", {})
    assert generation.parse_mode("beam:4") == ("beam", {"num_beams": 4})
    assert generation.parse_mode("beam:2,length_penalty=0.6") == (
        "beam",
        {"num_beams": 2, "length_penalty": 0.6},
    )
    assert generation.parse_mode("sample") == ("sample", {})
    assert generation.parse_mode("sample:temperature=0.7,top_k=40,top_p=0.9,seed=3") == (
        "sample",
        {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 3},
    )
    bad = {
        "nucleus": "Unknown decoding mode",
        "greedy:2": "takes no parameters",
        "beam": "beam count",
        "beam:0": "beam count",
        "beam:x": "beam count",
        "beam:2,alpha=1": "Unknown parameter 'alpha'",
        "sample:temp=1": "Unknown parameter 'temp'",
        "sample:top_k": "'top_k' needs a value",
        "sample:top_k=0.5": "Bad value '0.5' for top_k",
    }
    for mode, message in bad.items():
        with pytest.raises(ValueError, match=message):
            generation.parse_mode(mode)
    prefill, step = toy_fns()
    with pytest.raises(ValueError, match="temperature"):
        generation.sample(
            prefill,
            step,
            PROMPTS,
            LENGTHS,
            max_new_tokens=2,
            rng=jax.random.key(0),
            temperature=-1.0,
            **COMMON,
        )


# A tiny Decoder: KV-cached decoding must equal re-running the full forward pass.
DEC_VOCAB, STEPS = 16, 4
DEC_PROMPTS = np.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [4, 0, 0, 0, 0]], np.int32)
DEC_LENGTHS = np.array([3, 5, 1], np.int32)
MEMORY = np.random.default_rng(7).standard_normal((3, 4, 24)).astype(np.float32)
MEMORY_MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], bool)

LLAMA = dict(posemb="rope", norm_type="rmsnorm", mlp_type="swiglu", num_kv_heads=2, attn_bias=False)
SIMVLM = dict(cross_attention=True, tie_embeddings=False, num_kv_heads=2)


def decoder_and_fns(options, prefix_lm=False):
    """(model, variables, cached prefill/step, no-cache reference prefill/step)."""
    model = decoder.Decoder(
        vocab_size=DEC_VOCAB, width=32, depth=2, mlp_dim=64, num_heads=4, max_len=16, **options
    )
    cross = options.get("cross_attention", False)
    memory = dict(memory=MEMORY, memory_mask=MEMORY_MASK) if cross else {}
    variables = random_params(model, DEC_PROMPTS, **memory, seed=1)
    cached = decoder.decoding_fns(
        model, variables, max_new_tokens=STEPS, prefix_lm=prefix_lm, **memory
    )
    extras = dict(memory, prefix_len=DEC_LENGTHS if prefix_lm else None)

    def logits_fn(tokens, mask, extras):
        return model.apply(variables, tokens, attention_mask=mask, **extras)[0]

    return model, variables, cached, generation.full_forward_fns(logits_fn, STEPS, extras)


DEC_KW = dict(max_new_tokens=STEPS, eos_id=2, pad_id=PAD)


@pytest.mark.parametrize(
    "options,prefix_lm", [(LLAMA, False), (SIMVLM, True)], ids=["llama", "simvlm_prefix_lm"]
)
def test_cached_decoding_equals_the_no_cache_reference(options, prefix_lm):
    _, _, cached, reference = decoder_and_fns(options, prefix_lm)
    modes = (
        "greedy",
        "sample:temperature=1.5,top_k=8,top_p=0.95,seed=1",
        "beam:3,length_penalty=0.6",
    )
    for mode in modes:
        run = lambda fns, mode=mode: jax.jit(  # noqa: E731
            lambda p, n: generation.decode(mode, *fns, p, n, **DEC_KW)
        )(DEC_PROMPTS, DEC_LENGTHS)
        (tokens, scores), (ref_tokens, ref_scores) = run(cached), run(reference)
        assert tokens.shape == (3, STEPS)
        np.testing.assert_array_equal(tokens, ref_tokens, err_msg=mode)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, err_msg=mode)


def test_batched_prompts_decode_as_each_alone():
    model, variables, cached, _ = decoder_and_fns(LLAMA)
    batch, batch_scores = jax.jit(lambda p, n: generation.greedy(*cached, p, n, **DEC_KW))(
        DEC_PROMPTS, DEC_LENGTHS
    )
    fns = decoder.decoding_fns(model, variables, max_new_tokens=STEPS)
    b = 2  # the shortest prompt, the most padded in the batch
    n = DEC_LENGTHS[b]
    alone, score = generation.greedy(
        *fns, DEC_PROMPTS[b : b + 1, :n], DEC_LENGTHS[b : b + 1], **DEC_KW
    )
    np.testing.assert_array_equal(alone[0], batch[b])
    np.testing.assert_allclose(score[0], batch_scores[b], rtol=1e-5)


def test_cached_decoding_after_prefix_embeddings():
    """A visual prefix (Frozen, ClipCap; SimVLM's decoder-only prefix LM with prefix_lm)."""
    model, variables, _, _ = decoder_and_fns(LLAMA)
    prefix = np.random.default_rng(3).standard_normal((3, 2, 32)).astype(np.float32)
    cached = decoder.decoding_fns(
        model, variables, max_new_tokens=STEPS, prefix_embeddings=prefix, prefix_lm=True
    )

    def logits_fn(tokens, mask, extras):
        mask = jnp.concatenate([jnp.ones((3, 2), bool), mask], axis=1)
        logits = model.apply(
            variables,
            tokens,
            attention_mask=mask,
            prefix_embeddings=extras["prefix"],
            prefix_len=2 + extras["lengths"],
        )[0]
        return logits[:, 2:]

    reference = generation.full_forward_fns(
        logits_fn, STEPS, {"prefix": prefix, "lengths": DEC_LENGTHS}
    )
    run = lambda fns: jax.jit(  # noqa: E731
        lambda p, n: generation.greedy(*fns, p, n, **DEC_KW)
    )(DEC_PROMPTS, DEC_LENGTHS)
    (tokens, scores), (ref_tokens, ref_scores) = run(cached), run(reference)
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4)
