"""The PrefixLM objective (SimVLM): masks, the loss on suffix tokens only, and generation
consistent with training, for both architectures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from objectives.prefix_lm import PrefixLM, shift_to_suffix

IMAGE = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8)
DECODER = dict(vocab_size=20, width=32, depth=2, mlp_dim=64, num_heads=2, max_len=20)
PAD, BOS, EOS = 0, 2, 3


def _model(arch):
    return PrefixLM(
        image=IMAGE,
        decoder=DECODER,
        encoder=dict(depth=1, num_heads=2, mlp_dim=64),
        architecture=arch,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
    )


def _batch():
    rng = np.random.default_rng(0)
    tokens = np.array(
        [
            [5, 6, 7, 8, EOS, PAD, PAD, PAD],
            [9, 10, EOS, PAD, PAD, PAD, PAD, PAD],
            [4, 5, 6, 7, 8, 9, 10, EOS],
        ],
        np.int32,
    )
    return {
        "image": rng.normal(size=(3, 16, 16, 3)).astype(np.float32),
        "tokens": tokens,
        "prefix_len": np.array([2, 0, 5], np.int32),
        "has_image": np.array([True, True, False]),
    }


@pytest.fixture(params=["encoder_decoder", "decoder_only"])
def setup(request):
    model = _model(request.param)
    params = model.init(jax.random.key(0), _batch())["params"]
    return model, params


def test_shift_to_suffix():
    tokens = jnp.array([[5, 6, 7, EOS, PAD]])
    np.testing.assert_array_equal(shift_to_suffix(tokens, jnp.array([2]), PAD), [[7, EOS, 0, 0, 0]])


def test_loss_counts_suffix_tokens_only_and_ignores_padding(setup):
    model, params = setup
    batch = _batch()
    loss, metrics = model.apply({"params": params}, batch)
    # Targets: row 0: 7, 8, EOS; row 1: 9, 10, EOS; row 2: 9, 10, EOS.
    assert float(metrics["target_tokens"]) == pytest.approx(3.0)
    assert np.isfinite(float(loss))
    longer = dict(batch, tokens=np.pad(batch["tokens"], ((0, 0), (0, 3))))
    np.testing.assert_allclose(model.apply({"params": params}, longer)[0], loss, rtol=1e-5)


def test_text_only_row_with_an_empty_prefix_ignores_its_image(setup):
    """Such a row has no valid memory key (encoder_decoder: every encoder and cross-attention
    key is masked): it must not average the masked image tokens in."""
    model, params = setup
    batch = dict(_batch(), prefix_len=np.array([2, 0, 0], np.int32))
    other = batch["image"].copy()
    other[2] = np.random.default_rng(5).normal(size=other[2].shape) * 3.0
    loss = model.apply({"params": params}, batch)[0]
    np.testing.assert_allclose(model.apply({"params": params}, dict(batch, image=other))[0], loss)
    # Positive control: the same change on a row with an image changes the loss.
    other[0] = other[2]
    assert abs(float(model.apply({"params": params}, dict(batch, image=other))[0] - loss)) > 1e-5


def test_suffix_never_sees_the_future_and_prefix_is_input(setup):
    model, params = setup
    batch = _batch()

    def per_token_loss(b):
        # Loss of row 0 with only its first target counted: change row 0's last target.
        b = dict(
            b,
            tokens=b["tokens"][:1],
            image=b["image"][:1],
            prefix_len=b["prefix_len"][:1],
            has_image=b["has_image"][:1],
        )
        cut = dict(b, tokens=np.where(np.arange(8) <= 2, b["tokens"], PAD).astype(np.int32))
        return model.apply({"params": params}, cut)[0]

    base = per_token_loss(batch)
    later = dict(batch, tokens=batch["tokens"].copy())
    later["tokens"][0, 3] = 11  # after the first target (position 2): cannot change its loss
    np.testing.assert_allclose(per_token_loss(later), base, rtol=1e-6)
    prefix = dict(batch, tokens=batch["tokens"].copy())
    prefix["tokens"][0, 0] = 12  # the prefix is model input: it changes the prediction
    assert abs(float(per_token_loss(prefix)) - float(base)) > 1e-6


def test_greedy_generation_continues_as_training_predicts(setup):
    model, params = setup
    batch = _batch()
    prompts = np.where(np.arange(8)[None] < batch["prefix_len"][:, None], batch["tokens"], PAD)
    out = model.apply(
        {"params": params},
        batch["image"],
        prompts.astype(np.int32),
        batch["prefix_len"],
        method="generate",
        max_new_tokens=4,
        decode="greedy",
    )
    assert out["tokens"].shape == (3, 4) and out["scores"].shape == (3,)

    # The first generated token is the one the training forward finds most likely there:
    # with only that target counted, the candidate of lowest loss.
    for row in range(2):  # rows with images (generation always conditions on the image)
        b = {k: v[row : row + 1] for k, v in batch.items()}
        probe = dict(
            b,
            tokens=np.where(np.arange(8) <= b["prefix_len"][0], b["tokens"], PAD).astype(np.int32),
        )
        best, best_loss = None, None
        for candidate in range(1, DECODER["vocab_size"]):  # 0 is PAD: never a target
            t = probe["tokens"].copy()
            t[0, b["prefix_len"][0]] = candidate
            loss = float(model.apply({"params": params}, dict(probe, tokens=t))[0])
            if best_loss is None or loss < best_loss:
                best, best_loss = candidate, loss
        assert int(out["tokens"][row, 0]) == best


def test_flops_and_unknown_architecture():
    assert (
        _model("encoder_decoder").train_flops_per_example({"image": (16, 16, 3), "tokens": (8,)})[
            "float32"
        ]
        > 0
    )
    with pytest.raises(ValueError, match="architecture must be one of"):
        _model("decoder_first").init(jax.random.key(0), _batch())


@pytest.mark.parametrize("decode", ["greedy", "beam:3", "sample:temperature=0.8,top_k=5,seed=1"])
def test_kv_cache_generation_equals_the_uncached_reference(setup, decode):
    model, params = setup
    batch = _batch()
    prompts = np.where(np.arange(8)[None] < batch["prefix_len"][:, None], batch["tokens"], PAD)
    args = (batch["image"], prompts.astype(np.int32), batch["prefix_len"])
    cached = model.apply(
        {"params": params}, *args, method="generate", max_new_tokens=5, decode=decode
    )
    plain = model.apply(
        {"params": params},
        *args,
        method="generate",
        max_new_tokens=5,
        decode=decode,
        use_cache=False,
    )
    np.testing.assert_array_equal(cached["tokens"], plain["tokens"])
    np.testing.assert_allclose(cached["scores"], plain["scores"], rtol=1e-4, atol=1e-5)
