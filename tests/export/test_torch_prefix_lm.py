"""`--format torch` for the prefix_lm objective (SimVLM): the repo's PyTorch PrefixLM and
Decoder against vlax on random weights (logits, greedy generation, export/import)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from etils import epath

import objectives
from experiments.export import families, torch_target
from experiments.export import torch_models as tm
from experiments.export.families import torch_rules
from experiments.export.torch_models import config as config_lib
from experiments.interop import mapping
from experiments.training import run_meta
from models import decoder as decoder_lib
from models import generation, layers
from objectives import prefix_lm
from tests.models.test_layers import random_params

SIZE, PATCH, MAX_LEN, VOCAB = 16, 8, 8, 40
PAD, BOS, EOS = 0, 1, 2
NUM_IMAGE_TOKENS = (SIZE // PATCH) ** 2
MAX_NEW = 5
IMAGE = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=PATCH)
IDS = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)

# Each model covers several options at once; "scan" stacks blocks with nn.scan.
MODELS = {
    # SimVLM-like: gelu / layernorm / learned positions / tied head, a narrower ViT (img_proj).
    "encoder_decoder": dict(
        image=dict(IMAGE, width=16, mlp_dim=32, scan=True),
        decoder=dict(vocab_size=VOCAB, width=32, depth=2, mlp_dim=64, num_heads=4, max_len=16),
        encoder=dict(depth=1, num_heads=2, mlp_dim=48),
        architecture="encoder_decoder",
        **IDS,
    ),
    # Llama-like decoder: rope / rmsnorm / swiglu / grouped-query attention with a head_dim
    # of its own / no attention biases / untied head, scanned.
    "decoder_only": dict(
        image=dict(IMAGE, posemb="sincos2d", activation="gelu_tanh"),
        decoder=dict(
            vocab_size=VOCAB,
            width=32,
            depth=2,
            mlp_dim=48,
            num_heads=4,
            num_kv_heads=2,
            head_dim=12,
            mlp_type="swiglu",
            norm_type="rmsnorm",
            norm_eps=1e-5,
            posemb="rope",
            rope_base=500.0,
            attn_bias=False,
            tie_embeddings=False,
            scan=True,
            max_len=32,
        ),
        architecture="decoder_only",
        **IDS,
    ),
    # Cross-attention with rope, multi-query attention, the encoder's default sizes, and an
    # image pool_type/head that PrefixLM overrides (none, no head).
    "encoder_decoder_llama": dict(
        image=dict(IMAGE, pool_type="map", num_classes=7, ln_pre=True),
        decoder=dict(
            vocab_size=VOCAB,
            width=32,
            depth=1,
            mlp_dim=48,
            num_heads=4,
            num_kv_heads=1,
            mlp_type="swiglu",
            norm_type="rmsnorm",
            posemb="rope",
            tie_embeddings=False,
            max_len=16,
        ),
        architecture="encoder_decoder",
        **IDS,
    ),
    # Every option of the encoder group (layers.Encoder's kwargs): post-LN blocks without a
    # final norm, its own activation and epsilon, scanned and rematerialised, dropout (off at
    # inference), unjitted blocks.
    "encoder_decoder_encoder_options": dict(
        image=dict(IMAGE),
        decoder=dict(vocab_size=VOCAB, width=32, depth=1, mlp_dim=64, num_heads=4, max_len=16),
        encoder=dict(
            depth=2,
            num_heads=2,
            mlp_dim=40,
            activation="gelu_tanh",
            norm_eps=1e-5,
            post_norm=True,
            final_norm=False,
            scan=True,
            remat=True,
            dropout=0.1,
            jit_blocks=False,
        ),
        architecture="encoder_decoder",
        **IDS,
    ),
    # No positions, quick_gelu, an image projection, a decoder variant.
    "decoder_only_nopos": dict(
        image=dict(IMAGE, width=16, mlp_dim=32, patch_bias=False),
        decoder=dict(variant="mu", vocab_size=VOCAB, posemb="none", activation="quick_gelu"),
        architecture="decoder_only",
        **IDS,
    ),
}


def _batch() -> dict[str, np.ndarray]:
    """Padding, different prefix lengths, text-only rows (one with an empty prefix)."""
    tokens = np.array(
        [
            [5, 6, 7, 8, EOS, PAD, PAD, PAD],
            [9, 10, EOS, PAD, PAD, PAD, PAD, PAD],
            [4, 5, 6, 7, 8, 9, 10, EOS],
            [11, 12, 13, EOS, PAD, PAD, PAD, PAD],
        ],
        np.int32,
    )
    return {
        "image": np.random.default_rng(2).standard_normal((4, SIZE, SIZE, 3)).astype(np.float32),
        "tokens": tokens,
        "prefix_len": np.array([2, 0, 5, 0], np.int32),
        "has_image": np.array([True, True, False, False]),
    }


BATCH = _batch()
DATA = {"name": "test", "image_size": SIZE, "max_len": MAX_LEN, "mean": 0.5, "std": 0.25}


def _model(name: str, **overrides) -> prefix_lm.PrefixLM:
    return prefix_lm.PrefixLM(**{**MODELS[name], **overrides})


def _params(name: str, seed: int = 0) -> dict:
    return jax.tree.map(np.asarray, random_params(_model(name), BATCH, seed=seed)["params"])


def _meta(name: str, params, model_config=None) -> dict:
    config = ml_collections.ConfigDict({"objective": "prefix_lm"})
    return run_meta.make_meta(
        config,
        model_config=MODELS[name] if model_config is None else model_config,
        params=params,
        tokenizer=None,
        data=DATA,
    )


def _vlax_forward(name: str, params, **overrides) -> tuple[np.ndarray, float]:
    """(the training forward's logits [B, L, V], its loss): the decoder's output as
    PrefixLM.__call__ computes it, captured from that very call."""
    model = _model(name, **overrides)
    (loss, _), state = model.apply(
        {"params": params},
        BATCH,
        capture_intermediates=lambda mdl, method: mdl.name == "dec" and method == "__call__",
        mutable=["intermediates"],
    )
    logits = np.asarray(state["intermediates"]["dec"]["__call__"][0][0])
    if MODELS[name]["architecture"] == "decoder_only":
        logits = logits[:, NUM_IMAGE_TOKENS:]
    return logits, float(loss)


def _prompts() -> tuple[np.ndarray, np.ndarray]:
    """Each row's prefix as a right-padded prompt [B, L] and its length [B] (0: captioning)."""
    keep = np.arange(MAX_LEN)[None] < BATCH["prefix_len"][:, None]
    return np.where(keep, BATCH["tokens"], PAD).astype(np.int32), BATCH["prefix_len"]


def _vlax_generate(name: str, params, eos_id: int = EOS) -> np.ndarray:
    prompts, lengths = _prompts()
    out = _model(name, eos_id=eos_id).apply(
        {"params": params},
        BATCH["image"],
        prompts,
        lengths,
        method="generate",
        max_new_tokens=MAX_NEW,
        decode="greedy",
    )
    return np.asarray(out["tokens"])


def _torch_generate(model: tm.PrefixLM) -> np.ndarray:
    prompts, lengths = _prompts()
    tokens = model.generate(
        torch.from_numpy(BATCH["image"]),
        torch.from_numpy(prompts),
        torch.from_numpy(lengths),
        max_new_tokens=MAX_NEW,
    )
    assert tokens.shape == (4, MAX_NEW) and tokens.dtype == torch.long
    return tokens.numpy()


def _torch_forward(model: tm.PrefixLM) -> tuple[np.ndarray, float]:
    """(logits, the training loss computed from them and `targets`)."""
    b = {k: torch.from_numpy(v) for k, v in BATCH.items()}
    with torch.no_grad():
        logits = model(b["image"], b["tokens"], b["prefix_len"], b["has_image"])
    targets, mask = model.targets(b["tokens"], b["prefix_len"])
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    loss = (nll * mask).sum() / mask.sum().clamp_min(1)
    return logits.numpy(), float(loss)


def _assert_parity(name: str, params, model: tm.PrefixLM) -> float:
    """Max-abs logit difference (asserted < 1e-5); the loss from the torch logits matches."""
    ref, ref_loss = _vlax_forward(name, params)
    got, got_loss = _torch_forward(model)
    assert got.shape == ref.shape == (4, MAX_LEN, VOCAB)
    diff = float(np.abs(got - ref).max())
    assert diff < 1e-5, diff
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
    return diff


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_prefix_lm_matches_vlax_and_import_is_exact(name, tmp_path):
    params = _params(name)
    notes = torch_target.write(epath.Path(tmp_path), params, _meta(name, params))
    assert notes and "float32" in notes[0]
    assert tm.read_config(tmp_path)["objective"] == "prefix_lm"
    model = tm.load(tmp_path)
    assert isinstance(model, tm.PrefixLM) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    diff = _assert_parity(name, params, model)

    # Greedy generation, token for token; then with an EOS the model does produce, so rows
    # stop early (row 0 by its third token at the latest) and are padded after.
    want = _vlax_generate(name, params)
    np.testing.assert_array_equal(_torch_generate(model), want)
    eos = int(want[0, 2])
    stopped = _vlax_generate(name, params, eos_id=eos)
    model.eos_id = eos
    np.testing.assert_array_equal(_torch_generate(model), stopped)
    first = int(np.argmax(stopped[0] == eos))
    assert first <= 2 and (stopped[0, first + 1 :] == PAD).all(), stopped
    print(name, f"logits max-abs diff {diff:.2e}; greedy tokens {want.tolist()}")

    model_config, back = torch_target.read(tmp_path)
    assert model_config == config_lib.complete_prefix_lm(MODELS[name])
    want_p, got_p = mapping.flatten_params(params), mapping.flatten_params(back)
    assert set(want_p) == set(got_p)
    for path in want_p:
        same = np.array_equal(got_p[path], want_p[path])
        assert got_p[path].dtype == want_p[path].dtype and same, path


def test_bf16_params_export_as_their_fp32_upcast(tmp_path):
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params("decoder_only", seed=3))
    meta = _meta("decoder_only", params)
    meta["model_config"]["decoder"]["dtype"] = "bfloat16"
    notes = torch_target.write(epath.Path(tmp_path), params, meta)
    assert "bfloat16" in notes[0] and any("decoder trained with dtype=bfloat16" in n for n in notes)
    upcast = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    model = tm.load(tmp_path)
    _assert_parity("decoder_only", upcast, model)
    _, back = torch_target.read(tmp_path)
    for path, x in mapping.flatten_params(back).items():
        assert np.array_equal(x, mapping.flatten_params(upcast)[path]), path


# ------------------------------------------------------------------ the Decoder on its own

DECODERS = {
    # Cross-attention to a memory of another width (24), padding from pad_id.
    "cross": dict(
        vocab_size=VOCAB,
        width=32,
        depth=2,
        mlp_dim=64,
        num_heads=4,
        max_len=16,
        cross_attention=True,
        pad_id=PAD,
        activation="gelu_tanh",
    ),
    # Visual prefix + prefix-LM mask, explicit positions and attention mask, GQA, rope.
    "prefix": dict(
        vocab_size=VOCAB,
        width=32,
        depth=2,
        mlp_dim=48,
        num_heads=4,
        num_kv_heads=2,
        posemb="rope",
        norm_type="rmsnorm",
        mlp_type="swiglu",
        attn_bias=False,
    ),
}
MEMORY_WIDTH = 24


def _decoder_inputs(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    tokens = rng.integers(3, VOCAB, (3, 6)).astype(np.int32)
    tokens[0, 4:], tokens[1, 1:] = PAD, PAD
    if name == "cross":
        memory_mask = np.ones((3, 5), bool)
        memory_mask[1, 3:], memory_mask[2] = False, False  # row 2: every memory slot masked
        return {
            "tokens": tokens,
            "memory": rng.standard_normal((3, 5, MEMORY_WIDTH)).astype(np.float32),
            "memory_mask": memory_mask,
        }
    mask = np.ones((3, 9), bool)
    mask[0, 7:] = False
    return {
        "tokens": tokens,
        "prefix_embeddings": rng.standard_normal((3, 3, 32)).astype(np.float32),
        "prefix_len": np.array([5, 3, 9], np.int32),
        "attention_mask": mask,
        "positions": np.arange(9, dtype=np.int32)[None].repeat(3, 0) + np.array([[0], [4], [9]]),
    }


def _torch_decoder(cfg: dict, params) -> tm.Decoder:
    state = mapping.to_torch({"dec": params}, torch_rules.decoder(cfg))
    model = tm.Decoder(cfg, memory_width=MEMORY_WIDTH if cfg.get("cross_attention") else None)
    model.load_state_dict({k.removeprefix("dec."): torch.from_numpy(v) for k, v in state.items()})
    return model.eval()


@pytest.mark.parametrize("name", list(DECODERS))
def test_decoder_matches_vlax(name):
    cfg, inputs = DECODERS[name], _decoder_inputs(name)
    model = decoder_lib.Decoder(**cfg)
    tokens, kwargs = inputs["tokens"], {k: v for k, v in inputs.items() if k != "tokens"}
    params = random_params(model, tokens, **kwargs)["params"]
    ref, _ = model.apply({"params": params}, tokens, **kwargs)
    with torch.no_grad():
        got = _torch_decoder(cfg, params)(
            torch.from_numpy(tokens), **{k: torch.from_numpy(v) for k, v in kwargs.items()}
        )
    assert got.shape == ref.shape
    assert np.abs(got.numpy() - np.asarray(ref)).max() < 1e-5


def test_decoder_generate_matches_vlax_cached_greedy():
    """A plain causal LM (no prefix, no memory): right-padded prompts of different lengths."""
    cfg = DECODERS["prefix"]
    model = decoder_lib.Decoder(**cfg)
    prompts = np.array([[5, 6, 7, 0], [9, 0, 0, 0], [4, 5, 6, 7]], np.int32)
    lengths = np.array([3, 1, 4], np.int32)
    params = random_params(model, prompts, seed=4)["params"]
    prefill, step = decoder_lib.decoding_fns(model, {"params": params}, max_new_tokens=6)
    want, _ = generation.greedy(
        prefill, step, prompts, lengths, max_new_tokens=6, eos_id=None, pad_id=PAD
    )
    got = _torch_decoder(cfg, params).generate(
        torch.from_numpy(prompts), torch.from_numpy(lengths), 6, eos_id=None, pad_id=PAD
    )
    np.testing.assert_array_equal(got.numpy(), np.asarray(want))


# ------------------------------------------------------------------ refusals, defaults, loading


def test_refused_options_name_themselves(tmp_path):
    base = MODELS["decoder_only"]
    meta = {"objective": "prefix_lm", "data": DATA}
    assert torch_target.mismatches(base, meta) == []
    dec, img = base["decoder"], base["image"]
    cases = {
        "model.decoder.posemb='alibi'": {**base, "decoder": {**dec, "posemb": "alibi"}},
        "model.decoder.norm_type='scale'": {**base, "decoder": {**dec, "norm_type": "scale"}},
        "model.decoder.mlp_type='geglu'": {**base, "decoder": {**dec, "mlp_type": "geglu"}},
        "model.decoder.sliding_window": {**base, "decoder": {**dec, "sliding_window": 4}},
        "model.decoder.cross_attention": {**base, "decoder": {**dec, "cross_attention": True}},
        "model.image.activation='relu'": {**base, "image": {**img, "activation": "relu"}},
        "model.architecture='decoder_first'": {**base, "architecture": "decoder_first"},
        "model.label_smoothing": {**base, "label_smoothing": 0.1},
        "num_kv_heads 3 does not divide": {**base, "decoder": {**dec, "num_kv_heads": 3}},
        "objective 'prefix_lm'": {"image": img},
    }
    for needle, model_config in cases.items():
        problems = torch_target.mismatches(model_config, meta)
        assert len(problems) == 1 and needle in problems[0], (needle, problems)
    other = torch_target.mismatches(base, {**meta, "objective": "flamingo"})
    assert len(other) == 1 and "objective 'flamingo'" in other[0] and "prefix_lm" in other[0]
    params = _params("decoder_only")
    bad = _meta("decoder_only", params, cases["model.decoder.posemb='alibi'"])
    with pytest.raises(ValueError, match="model.decoder.posemb"):
        torch_target.write(epath.Path(tmp_path), params, bad)


def test_encoder_precision_is_noted_and_the_export_computes_in_fp32(tmp_path):
    """The encoder group's dtype / matmul_dtype (what config.precision sets) are read by vlax:
    the export notes them, as for the other towers, and mirrors the model in float32."""
    name = "encoder_decoder"
    params = _params(name)
    encoder = {**MODELS[name]["encoder"], "dtype": "bfloat16", "matmul_dtype": "bfloat16"}
    config = {**MODELS[name], "encoder": encoder}
    assert torch_target.mismatches(config, {"objective": "prefix_lm", "data": DATA}) == []
    notes = torch_target.write(epath.Path(tmp_path), params, _meta(name, params, config))
    for key in ("dtype", "matmul_dtype"):
        assert f"the encoder trained with {key}=bfloat16; the export computes in float32." in notes
    assert not any("decoder trained" in n or "image tower trained" in n for n in notes), notes
    recorded = tm.read_config(tmp_path)["model_config"]["encoder"]
    assert (recorded["dtype"], recorded["matmul_dtype"]) == ("bfloat16", "bfloat16")
    model = tm.load(tmp_path)
    _assert_parity(name, params, model)  # against vlax in float32

    # vlax computed that encoder in bfloat16: its logits are the float32 ones to bf16 rounding.
    b16, _ = _vlax_forward(name, params, encoder=encoder)
    fp32, _ = _torch_forward(model)
    assert 1e-4 < np.abs(b16.astype(np.float32) - fp32).max() < 0.1

    model_config, back = torch_target.read(tmp_path)
    assert model_config == config_lib.complete_prefix_lm(config)
    for path, x in mapping.flatten_params(back).items():
        assert np.array_equal(x, mapping.flatten_params(params)[path]), path


def test_exports_with_the_three_field_encoder_group_still_load(tmp_path):
    """Exports written before the encoder group took every layers.Encoder field recorded only
    depth / num_heads / mlp_dim: they load and read back as the same model."""
    name = "encoder_decoder"
    params = _params(name)
    torch_target.write(epath.Path(tmp_path), params, _meta(name, params))
    config = tm.read_config(tmp_path)
    config["model_config"]["encoder"] = {"depth": 1, "num_heads": 2, "mlp_dim": 48}
    (tmp_path / "config.json").write_text(json.dumps(config))
    _assert_parity(name, params, tm.load(tmp_path))
    model_config, back = torch_target.read(tmp_path)
    assert model_config["encoder"] == {
        **config_lib.ENCODER_DEFAULTS,
        **{"depth": 1, "num_heads": 2, "mlp_dim": 48},
        "dtype": "float32",
        "matmul_dtype": None,
    }
    for path, x in mapping.flatten_params(back).items():
        assert np.array_equal(x, mapping.flatten_params(params)[path]), path


def test_encoder_options_without_a_torch_mirror_are_refused():
    base = MODELS["encoder_decoder"]
    meta = {"objective": "prefix_lm", "data": DATA}
    enc = base["encoder"]
    cases = {
        "model.encoder.activation='relu' has no torch mirror": {"activation": "relu"},
        "model.encoder.rope is an option the torch modules do not mirror": {"rope": True},
    }
    for needle, change in cases.items():
        problems = torch_target.mismatches({**base, "encoder": {**enc, **change}}, meta)
        assert len(problems) == 1 and needle in problems[0], (needle, problems)


def _field_defaults(cls, skip=()) -> dict:
    out = {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.init and f.name not in ("parent", "name", *skip)
    }
    if "dtype" in out:
        out["dtype"] = np.dtype(out["dtype"]).name
    return out


def test_defaults_equal_the_vlax_modules():
    assert _field_defaults(decoder_lib.Decoder) == config_lib.DECODER_DEFAULTS
    required = config_lib.PREFIX_LM_REQUIRED
    assert _field_defaults(prefix_lm.PrefixLM, skip=required) == config_lib.PREFIX_LM_DEFAULTS
    fields = {f.name: f for f in dataclasses.fields(prefix_lm.PrefixLM)}
    assert all(fields[k].default is dataclasses.MISSING for k in required)
    assert config_lib.MLP_TYPES == decoder_lib.MLP_TYPES
    assert config_lib.NORM_TYPES == decoder_lib.NORM_TYPES
    assert config_lib.DECODER_POSEMBS == decoder_lib.POSEMB_TYPES
    assert config_lib.ARCHITECTURES == prefix_lm.ARCHITECTURES
    # Every exported family has a torch module, and each is an objective of vlax's registry.
    assert set(tm.loading.MODULES) == set(families.FAMILIES) <= set(objectives.REGISTRY)
    # The encoder group: layers.Encoder's fields; dtype / matmul_dtype follow the decoder.
    encoder = _field_defaults(layers.Encoder)
    sizes = ("depth", "num_heads", "mlp_dim")
    assert all(encoder.pop(k) is dataclasses.MISSING for k in sizes)
    following = {k: encoder.pop(k) for k in config_lib.ENCODER_FROM_DECODER}
    assert following == {k: config_lib.DECODER_DEFAULTS[k] for k in following}
    assert {k: config_lib.ENCODER_DEFAULTS[k] for k in encoder} == encoder
    assert set(config_lib.ENCODER_DEFAULTS) == {*encoder, *sizes}

    # The encoder's sizes without a config: depth blocks, num_heads heads, 4 x width MLP.
    model = prefix_lm.PrefixLM(**{**MODELS["encoder_decoder"], "encoder": None})
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), BATCH))["params"]
    enc = shapes["encoder"]
    width = MODELS["encoder_decoder"]["decoder"]["width"]
    want = config_lib.ENCODER_DEFAULTS
    assert len([k for k in enc if k.startswith("block_")]) == want["depth"]
    assert enc["block_0"]["attn"]["query"]["kernel"].shape[1] == want["num_heads"]
    assert enc["block_0"]["mlp"]["fc1"]["kernel"].shape[1] == 4 * width
    assert config_lib.complete_prefix_lm({**MODELS["encoder_decoder"], "encoder": None})[
        "encoder"
    ] == {**want, "mlp_dim": 4 * width, "dtype": "float32", "matmul_dtype": None}


def test_load_dispatches_on_the_recorded_objective(tmp_path):
    """Exports without an "objective" entry (before prefix_lm existed) load as TwoTower."""
    from safetensors.torch import save_file

    cfg = {"image": {"variant": "mu/8"}, "text": {"variant": "mu", "vocab_size": VOCAB}}
    two_tower = tm.TwoTower(cfg, SIZE)
    save_file(two_tower.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_config": cfg, "image_size": SIZE}))
    assert isinstance(tm.load(tmp_path), tm.TwoTower)
    (tmp_path / "config.json").write_text(
        json.dumps({"objective": "flamingo", "model_config": cfg, "image_size": SIZE})
    )
    with pytest.raises(ValueError, match="objective 'flamingo'"):
        tm.load(tmp_path)


def test_package_imports_without_jax_or_vlax(tmp_path):
    """Copied out of the repo, the package builds and runs a PrefixLM with torch only."""
    pkg = Path(tm.__file__).parent
    dest = tmp_path / "torch_models"
    dest.mkdir()
    for src in pkg.glob("*.py"):
        (dest / src.name).write_bytes(src.read_bytes())
    config = {
        "image": {"variant": "mu/8"},
        "decoder": {"variant": "mu", "vocab_size": VOCAB, "max_len": 16},
    }
    code = (
        "import sys\n"
        "for m in ('jax', 'flax', 'models', 'objectives', 'experiments'): sys.modules[m] = None\n"
        "import torch, torch_models\n"
        f"cfg = {config!r}\n"
        "for arch in ('encoder_decoder', 'decoder_only'):\n"
        "    m = torch_models.PrefixLM({**cfg, 'architecture': arch}, 16).eval()\n"
        "    img, tok = torch.zeros(2, 16, 16, 3), torch.ones(2, 4, dtype=torch.long)\n"
        "    lens = torch.tensor([1, 0])\n"
        "    print(tuple(m(img, tok, lens).shape), tuple(m.generate(img, tok, lens, 3).shape))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [f"(2, 4, {VOCAB}) (2, 3)"] * 2
