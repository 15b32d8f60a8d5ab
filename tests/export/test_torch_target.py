"""`--format torch`: the repo's PyTorch two-tower modules against vlax on random weights."""

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from etils import epath

from experiments.export import torch_models as tm
from experiments.export import torch_target
from experiments.export.torch_models import config as config_lib
from experiments.interop import mapping
from experiments.training import run_meta
from models import text, variants, vit
from objectives import contrastive, contrastive_reference
from tests.models.test_layers import random_params

SIZE, MAX_LEN, PAD, EOS, VOCAB = 32, 8, 0, 2, 40
TOWER = dict(width=32, depth=2, mlp_dim=64, num_heads=4)

# Each model covers several options at once; "scanned" stacks its blocks with nn.scan.
MODELS = {
    "siglip_like": dict(
        image=dict(
            TOWER,
            patch_size=8,
            pool_type="map",
            posemb="sincos2d",
            patch_bias=False,
            activation="gelu_tanh",
            num_classes=16,
            head_bias=False,
            norm_eps=1e-5,
        ),
        text=dict(
            TOWER,
            vocab_size=VOCAB,
            max_len=MAX_LEN,
            pool_type="mean",
            causal=False,
            activation="gelu_tanh",
            num_classes=16,
            head_bias=False,
            eos_id=EOS,
        ),
        loss="sigmoid",
        loss_impl="dense",
    ),
    "clip_like": dict(
        image=dict(
            TOWER,
            patch_size=8,
            pool_type="cls",
            ln_pre=True,
            activation="quick_gelu",
            num_classes=24,
            norm_eps=1e-5,
        ),
        text=dict(
            TOWER,
            vocab_size=VOCAB,
            max_len=MAX_LEN,
            pool_type="eos",
            eos_id=EOS,
            causal=True,
            activation="quick_gelu",
            num_classes=24,
            norm_eps=1e-5,
        ),
        loss="softmax",
        loss_impl="dense",
    ),
    "scanned": dict(
        image=dict(variant="mu/8", depth=2, pool_type="gap", final_norm=False, scan=True),
        text=dict(
            variant="mu",
            vocab_size=VOCAB,
            max_len=MAX_LEN,
            pool_type="map",
            causal=False,
            scan=True,
            pad_id=PAD,
        ),
        loss="softmax",
        loss_impl="dense",
    ),
    "bert_like": dict(
        image=dict(TOWER, patch_size=16, pool_type="gap", num_classes=8),
        text=dict(
            TOWER,
            vocab_size=VOCAB,
            max_len=MAX_LEN,
            pool_type="mean",
            causal=False,
            post_norm=True,
            final_norm=False,
            embed_norm=True,
            type_vocab_size=2,
            norm_eps=1e-12,
            num_classes=8,
        ),
    ),
    "siglip_text": dict(
        image=dict(TOWER, patch_size=16, pool_type="map", num_classes=8),
        text=dict(
            TOWER,
            vocab_size=VOCAB,
            max_len=MAX_LEN,
            pool_type="final",
            causal=False,
            mask_padding=False,
            activation="gelu_tanh",
            num_classes=8,
        ),
        loss="sigmoid",
        loss_impl="dense",
    ),
    "unmasked_mean": dict(
        image=dict(TOWER, patch_size=16, pool_type="cls", posemb="sincos2d", num_classes=8),
        text=dict(
            TOWER,
            vocab_size=VOCAB,
            max_len=MAX_LEN,
            pool_type="mean",
            causal=False,
            mask_padding=False,
            num_classes=8,
        ),
    ),
    "unmasked_map": dict(
        image=dict(TOWER, patch_size=16, pool_type="gap", num_classes=8),
        text=dict(
            TOWER,
            vocab_size=VOCAB,
            max_len=MAX_LEN,
            pool_type="map",
            causal=True,
            mask_padding=False,
            num_classes=8,
        ),
    ),
    "last_pool": dict(
        image=dict(TOWER, patch_size=16, pool_type="gap", num_classes=8),
        text=dict(TOWER, vocab_size=VOCAB, max_len=MAX_LEN, pool_type="last", num_classes=8),
    ),
    "first_pool": dict(
        image=dict(TOWER, patch_size=16, pool_type="map", num_classes=8),
        text=dict(
            TOWER,
            vocab_size=VOCAB,
            max_len=MAX_LEN,
            pool_type="first",
            causal=False,
            eos_id=None,
            num_classes=8,
        ),
        loss="sigmoid",
        loss_impl="dense",
    ),
}


def _tokens() -> np.ndarray:
    """Rows: EOS then padding; EOS at the end; no EOS (the fallback); EOS twice; all padding."""
    rng = np.random.default_rng(1)
    toks = rng.integers(3, VOCAB, (5, MAX_LEN)).astype(np.int32)
    toks[0, 3], toks[0, 4:] = EOS, PAD
    toks[1, -1] = EOS
    toks[2, 5:] = PAD
    toks[3, [2, 5]] = EOS
    toks[4] = PAD
    return toks


TOKENS = _tokens()
IMAGES = np.random.default_rng(2).standard_normal((3, SIZE, SIZE, 3)).astype(np.float32)
DATA = {"name": "test", "image_size": SIZE, "max_len": MAX_LEN, "mean": 0.5, "std": [0.2, 0.3, 0.4]}


def _model(name: str) -> contrastive.TwoTower:
    return contrastive.TwoTower(**MODELS[name])


def _params(name: str, seed: int = 0) -> dict:
    batch = {"image": IMAGES, "tokens": TOKENS[:3]}
    params = random_params(_model(name), batch, seed=seed)["params"]
    # Above log(100) so the softmax cap matters (sigmoid: uncapped, scale e^5).
    return {**params, "log_temp": jnp.asarray(5.0)}


def _meta(name: str, params, tokenizer=None) -> dict:
    config = ml_collections.ConfigDict({"objective": "contrastive"})
    return run_meta.make_meta(
        config, model_config=MODELS[name], params=params, tokenizer=tokenizer, data=DATA
    )


def _vlax_outputs(name: str, params) -> dict[str, np.ndarray]:
    model, variables = _model(name), {"params": params}
    zimg = model.apply(variables, IMAGES, method="embed_image")
    ztxt = model.apply(variables, TOKENS, method="embed_text")
    loss, _ = model.apply(variables, {"image": IMAGES, "tokens": TOKENS[:3]})
    return {"image": np.asarray(zimg), "text": np.asarray(ztxt), "loss": np.asarray(loss)}


def _torch_outputs(model: tm.TwoTower) -> dict[str, np.ndarray]:
    images, tokens = torch.from_numpy(IMAGES), torch.from_numpy(TOKENS)
    with torch.no_grad():
        out = {
            "image": model.encode_image(images).numpy(),
            "text": model.encode_text(tokens).numpy(),
            "logits": model(images, tokens).numpy(),
        }
    return out


def _loss_from_logits(logits: np.ndarray, loss: str) -> float:
    """The training loss of a square batch from its logits (contrastive_losses' formulas)."""
    logits = jnp.asarray(logits)
    if loss == "softmax":
        lse = jax.nn.logsumexp(logits, 1) + jax.nn.logsumexp(logits, 0)
        return float(jnp.mean(lse - 2 * jnp.diagonal(logits)) / 2)
    labels = 2 * jnp.eye(logits.shape[0]) - 1
    return float(-jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0])


def _assert_parity(name: str, ref_params, torch_model: tm.TwoTower) -> dict[str, float]:
    ref, got = _vlax_outputs(name, ref_params), _torch_outputs(torch_model)
    cfg = config_lib.complete_two_tower(MODELS[name])
    log_temp = float(ref_params["log_temp"])
    if cfg["loss"] == "softmax":
        log_temp = min(log_temp, contrastive_reference.SOFTMAX_MAX_LOG_TEMP)
    logits = np.exp(log_temp) * (ref["image"] @ ref["text"].T)
    if cfg["loss"] == "sigmoid":
        logits = logits + float(ref_params["logit_bias"])
    scale = np.exp(log_temp)
    np.testing.assert_allclose(float(torch_model.logit_scale().detach()), scale, rtol=1e-6)
    diffs = {
        "image": np.abs(got["image"] - ref["image"]).max(),
        "text": np.abs(got["text"] - ref["text"]).max(),
        "logits": np.abs(got["logits"] - logits).max(),
        "logits/scale": np.abs(got["logits"] - logits).max() / scale,
    }
    # Logits near +-scale (100-150 here) carry fp32 rounding of ~1e-5 absolute, so they are
    # held to 1e-5 relative to the scale (the cosines' own precision).
    assert max(diffs["image"], diffs["text"], diffs["logits/scale"]) < 1e-5, diffs
    # The logits are the ones the training loss uses (its first 3 images x first 3 texts).
    loss = _loss_from_logits(got["logits"][:3, :3], cfg["loss"])
    np.testing.assert_allclose(loss, ref["loss"], rtol=1e-5)
    return diffs


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_module_matches_vlax_and_import_is_exact(name, tmp_path):
    params = jax.tree.map(np.asarray, _params(name))
    notes = torch_target.write(epath.Path(tmp_path), params, _meta(name, params))
    assert notes and "float32" in notes[0]
    model = tm.load(tmp_path)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    diffs = _assert_parity(name, params, model)
    print(name, {k: f"{v:.2e}" for k, v in diffs.items()})

    model_config, back = torch_target.read(tmp_path)
    assert model_config == config_lib.complete_two_tower(MODELS[name])
    want, got = mapping.flatten_params(params), mapping.flatten_params(back)
    assert set(want) == set(got)
    for path in want:
        assert got[path].dtype == want[path].dtype and np.array_equal(got[path], want[path]), path


def test_bf16_params_export_as_their_fp32_upcast(tmp_path):
    params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), _params("clip_like", 3))
    torch_target.write(epath.Path(tmp_path), params, _meta("clip_like", params))
    upcast = jax.tree.map(lambda x: x.astype(np.float32), params)
    _assert_parity("clip_like", upcast, tm.load(tmp_path))
    _, back = torch_target.read(tmp_path)
    for path, x in mapping.flatten_params(back).items():
        assert np.array_equal(x, mapping.flatten_params(upcast)[path]), path


def test_config_files_and_tokenizer_copy(tmp_path):
    spm = tmp_path / "spm.model"
    spm.write_bytes(b"sentencepiece bytes")
    tok = {
        "path": str(spm),
        "sha256": hashlib.sha256(spm.read_bytes()).hexdigest(),
        "vocab_size": VOCAB,
        "pad_id": PAD,
        "eos_id": EOS,
        "bos_id": None,
    }
    params = jax.tree.map(np.asarray, _params("siglip_like"))
    out = epath.Path(tmp_path / "export")
    torch_target.write(out, params, _meta("siglip_like", params, tok))
    assert (out / "tokenizer.model").read_bytes() == b"sentencepiece bytes"
    config = tm.read_config(out)
    assert {k: config[k] for k in DATA if k != "name"} == {
        k: v for k, v in DATA.items() if k != "name"
    }
    assert config["tokenizer"]["file"] == "tokenizer.model"
    with open(out / "model.safetensors", "rb") as f:
        header = f.read(200)
    assert b'"format":"pt"' in header

    spm.write_bytes(b"another tokenizer")
    with pytest.raises(ValueError, match="not the tokenizer the run trained with"):
        torch_target.write(out, params, _meta("siglip_like", params, tok))


def test_refused_options_name_themselves(tmp_path):
    base = MODELS["clip_like"]
    meta = {"objective": "contrastive", "data": DATA}
    assert torch_target.mismatches(base, meta) == []
    cases = {
        "model.image.rope": {**base, "image": {**base["image"], "rope": True}},
        "model.text.pool_type='cls'": {**base, "text": {**base["text"], "pool_type": "cls"}},
        "model.image.activation='relu'": {**base, "image": {**base["image"], "activation": "relu"}},
        "model.loss='hinge'": {**base, "loss": "hinge"},
        "model.label_smoothing": {**base, "label_smoothing": 0.1},
    }
    for needle, model_config in cases.items():
        problems = torch_target.mismatches(model_config, meta)
        assert len(problems) == 1 and needle in problems[0], (needle, problems)
    assert "data description" in torch_target.mismatches(base, {"data": None})[0]
    assert (
        "objective 'prefix_lm'"
        in torch_target.mismatches(base, {**meta, "objective": "prefix_lm"})[0]
    )
    params = jax.tree.map(np.asarray, _params("clip_like"))
    bad = {**_meta("clip_like", params), "model_config": cases["model.image.rope"]}
    with pytest.raises(ValueError, match="model.image.rope"):
        torch_target.write(epath.Path(tmp_path), params, bad)


def test_defaults_and_variants_equal_the_vlax_modules():
    def defaults(cls) -> dict:
        out = {
            f.name: f.default
            for f in dataclasses.fields(cls)
            if f.name not in ("parent", "name", "image", "text")
        }
        if "dtype" in out:
            out["dtype"] = np.dtype(out["dtype"]).name
        return out

    assert defaults(vit.ViT) == config_lib.VIT_DEFAULTS
    assert defaults(text.TextTransformer) == config_lib.TEXT_DEFAULTS
    assert defaults(contrastive.TwoTower) == config_lib.TWO_TOWER_DEFAULTS
    assert config_lib.IMAGE_POOLS == vit.POOL_TYPES and config_lib.POSEMBS == vit.POSEMB_TYPES
    assert config_lib.TEXT_POOLS == text.POOL_TYPES
    assert config_lib.LOSSES == contrastive.LOSSES
    assert config_lib.SOFTMAX_MAX_LOG_TEMP == contrastive_reference.SOFTMAX_MAX_LOG_TEMP
    assert tuple(config_lib.SIZES) == variants.VARIANT_NAMES
    for size in variants.VARIANT_NAMES:
        for name in (size, f"{size}/14"):
            assert config_lib.decode_variant(name) == variants.decode_variant(name)


def test_package_imports_without_jax_or_vlax(tmp_path):
    """A PyTorch user copies the package out of the repo; it must not need jax or vlax."""
    pkg = Path(tm.__file__).parent
    dest = tmp_path / "torch_models"
    dest.mkdir()
    for src in pkg.glob("*.py"):
        (dest / src.name).write_bytes(src.read_bytes())
    code = (
        "import sys\n"
        "for m in ('jax', 'flax', 'models', 'objectives', 'experiments'): sys.modules[m] = None\n"
        "import torch, torch_models\n"
        "m = torch_models.TwoTower({'image': {'variant': 'mu/8'}, 'text': {'variant': 'mu'}}, 16)\n"
        "print(m.encode_text(torch.ones(1, 4, dtype=torch.long)).shape)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "torch.Size([1, 32])" in out.stdout


def test_vit_without_pooling_matches_vlax():
    """pool_type "none" (every token through the head): not a two-tower embedding, so the
    ViT module is checked on its own, loaded through the same table."""
    cfg = dict(TOWER, patch_size=8, pool_type="none", num_classes=12)
    model = vit.ViT(**cfg)
    params = random_params(model, IMAGES)["params"]
    ref, _ = model.apply({"params": params}, IMAGES)
    state = mapping.to_torch({"img": params}, torch_target.rules({"image": cfg, "text": {}}))
    torch_vit = tm.ViT(cfg, SIZE)
    torch_vit.load_state_dict(
        {k.removeprefix("img."): torch.from_numpy(v) for k, v in state.items()}, strict=True
    )
    with torch.no_grad():
        got = torch_vit(torch.from_numpy(IMAGES)).numpy()
    assert got.shape == ref.shape == (3, 16, 12)
    assert np.abs(got - np.asarray(ref)).max() < 1e-5
