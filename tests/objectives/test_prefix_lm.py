"""The PrefixLM objective (SimVLM): masks, the loss on suffix tokens only, and generation
consistent with training, for both architectures."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers
from objectives.prefix_lm import PrefixLM
from objectives.prefix_lm_encoder_decoder import shift_to_suffix

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


@pytest.mark.parametrize(
    "arch, names",
    [
        ("encoder_decoder", {"img", "img_proj", "txt_embed", "txt_pos", "encoder", "dec"}),
        ("decoder_only", {"img", "img_proj", "dec"}),
    ],
)
def test_parameter_tree(arch, names):
    """The top-level names that checkpoints and the torch export address (a ViT narrower than
    the decoder adds "img_proj")."""
    model = _model(arch).clone(image=dict(IMAGE, width=16, mlp_dim=32))
    shapes = jax.eval_shape(model.init, jax.random.key(0), _batch())["params"]
    assert set(shapes) == names
    if arch == "encoder_decoder":
        assert nn.meta.unbox(shapes["txt_pos"]).shape == (DECODER["max_len"], 32)
        assert set(shapes["encoder"]) == {"block_0", "encoder_norm"}


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


DATA = dict(vocab_size=20, max_len=8, image_size=16, bos_id=BOS, eos_id=EOS, pad_id=PAD)
BF16 = dict(dtype="bfloat16", matmul_dtype="bfloat16")


def test_encoder_group_is_the_encoders_kwargs():
    """Checked against layers.Encoder's fields like the other towers, so the precision policy's
    dtype / matmul_dtype are accepted (bf16_mixed on a SimVLM config stopped here)."""
    assert PrefixLM.CONFIG_MODULES["encoder"] is layers.Encoder
    cfg = dict(image=IMAGE, decoder={"width": 32}, encoder=dict(depth=1, scan=True, **BF16))
    filled = PrefixLM.fill_data_fields(cfg, DATA)
    assert filled["encoder"] == cfg["encoder"]
    assert filled["decoder"]["max_len"] == DATA["max_len"] + 1


def test_bf16_encoder_computes_in_bf16():
    model = PrefixLM(
        image=IMAGE,
        decoder=DECODER,
        encoder=dict(depth=1, num_heads=2, mlp_dim=64, **BF16),
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
    )
    params = nn.meta.unbox(model.init(jax.random.key(0), _batch()))["params"]
    assert params["encoder"]["block_0"]["mlp"]["fc1"]["kernel"].dtype == jnp.float32
    (loss, _), state = model.apply(
        {"params": params},
        _batch(),
        capture_intermediates=lambda mdl, _: mdl.name in ("encoder", "dec"),
        mutable=["intermediates"],
    )
    captured = state["intermediates"]
    assert captured["encoder"]["__call__"][0][0].dtype == jnp.bfloat16
    assert captured["dec"]["__call__"][0][0].dtype == jnp.float32  # the decoder keeps fp32
    assert np.isfinite(float(loss))


def test_encoder_defaults_follow_the_decoder():
    """depth 2, num_heads 4, mlp_dim 4 x the decoder width, the decoder's dtypes."""
    model = PrefixLM(image=IMAGE, decoder=dict(DECODER, **BF16), bos_id=BOS, pad_id=PAD)
    variables = nn.meta.unbox(model.init(jax.random.key(0), _batch()))
    enc = variables["params"]["encoder"]
    assert sorted(k for k in enc if k.startswith("block_")) == ["block_0", "block_1"]
    assert enc["block_0"]["attn"]["query"]["kernel"].shape == (32, 4, 8)
    assert enc["block_0"]["mlp"]["fc1"]["kernel"].shape == (32, 4 * 32)
    _, state = model.apply(
        variables,
        _batch(),
        capture_intermediates=lambda mdl, _: mdl.name == "encoder",
        mutable=["intermediates"],
    )
    assert state["intermediates"]["encoder"]["__call__"][0][0].dtype == jnp.bfloat16


def test_encoder_flops_are_keyed_by_the_encoders_dtype():
    # By hand: 4 image tokens (16 / 8 squared) + 8 text tokens = 12 encoder positions of width
    # 32, one layer: q/k/v/out 4 * 2*12*32*32, scores and mixing 2 * 2*12*12*32, MLP
    # 2 * 2*12*32*64.
    length = 4 + 8
    encoder = 4 * 2 * length * 32 * 32 + 2 * 2 * length * length * 32 + 2 * 2 * length * 32 * 64
    shapes = {"image": (16, 16, 3), "tokens": (8,)}
    plain = _model("encoder_decoder").train_flops_per_example(shapes)
    model = _model("encoder_decoder").clone(encoder=dict(depth=1, num_heads=2, mlp_dim=64, **BF16))
    split = model.train_flops_per_example(shapes)
    assert split == {"bfloat16": 3 * encoder, "float32": plain["float32"] - 3 * encoder}


def test_decoder_only_ignores_the_encoder_group():
    """One config serves both architectures (the shipped simvlm configs sweep them)."""
    model = _model("decoder_only")  # its encoder group sets depth, num_heads, mlp_dim
    assert "encoder" not in jax.eval_shape(model.init, jax.random.key(0), _batch())["params"]
    cfg = dict(image=IMAGE, decoder={"width": 32}, architecture="decoder_only")
    filled = PrefixLM.fill_data_fields(dict(cfg, encoder=dict(depth=3, **BF16)), DATA)
    assert filled["decoder"]["max_len"] == (16 // 8) ** 2 + 2 * DATA["max_len"] + 1
