"""vlax two-tower <-> transformers CLIPModel / SiglipModel: parity, round trips, refusals."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from etils import epath
from safetensors.numpy import load_file

from experiments.configs import common
from experiments.export import hf_export, output
from experiments.interop import hf_import, mapping
from objectives.contrastive import TwoTower


def _model_config(style, *, width, depth, heads, text_width, image_size, patch):
    image, text = common.tiny_towers(style)
    image.update(width=width, depth=depth, num_heads=heads, mlp_dim=2 * width, patch_size=patch)
    text.update(
        width=text_width,
        depth=depth,
        num_heads=heads,
        mlp_dim=2 * text_width,
        vocab_size=50,
        max_len=8,
        pad_id=0,
    )
    if style == "clip":
        image["num_classes"] = text["num_classes"] = 24
        text["eos_id"] = 3
        return dict(image=image, text=text, loss="softmax", loss_impl="dense"), image_size
    text["num_classes"] = width
    return dict(
        image=image,
        text=text,
        loss="sigmoid",
        loss_impl="dense",
        temperature_init=10.0,
        bias_init=-10.0,
    ), image_size


SHAPES = {
    "clip_a": _model_config(
        "clip", width=32, depth=2, heads=2, text_width=48, image_size=32, patch=8
    ),
    "clip_b": _model_config(
        "clip", width=48, depth=1, heads=4, text_width=32, image_size=24, patch=4
    ),
    "siglip_a": _model_config(
        "siglip", width=32, depth=2, heads=2, text_width=48, image_size=32, patch=8
    ),
    "siglip_b": _model_config(
        "siglip", width=48, depth=1, heads=3, text_width=24, image_size=28, patch=7
    ),
}


def _inputs(image_size):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, image_size, image_size, 3)).astype(np.float32)
    tokens = np.zeros((3, 8), np.int32)
    tokens[0, :4] = [5, 9, 7, 3]  # EOS then padding
    tokens[1, :2] = [4, 3]
    tokens[2] = [6, 7, 8, 9, 10, 11, 12, 3]  # no padding
    return images, tokens


def _random_model(name):
    model_config, size = SHAPES[name]
    model = TwoTower(**model_config)
    images, tokens = _inputs(size)
    params = nn.unbox(model.init(jax.random.key(1), {"image": images, "tokens": tokens})["params"])
    # Random biases and norms too, so a mis-mapped one cannot hide behind zeros and ones.
    keys = iter(jax.random.split(jax.random.key(2), 1000))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), params)
    meta = dict(
        objective="contrastive",
        model_config=model_config,
        tokenizer=None,
        data=dict(image_size=size, max_len=8, mean=0.5, std=0.5),
    )
    return model, params, meta, (images, tokens)


def _vlax_outputs(model, params, images, tokens):
    zi = np.asarray(model.apply({"params": params}, images, method="embed_image"))
    zt = np.asarray(model.apply({"params": params}, tokens, method="embed_text"))
    scale = np.exp(min(float(params["log_temp"]), np.log(100.0)))
    if model.loss == "sigmoid":
        return zi, zt, np.exp(float(params["log_temp"])) * zi @ zt.T + float(params["logit_bias"])
    return zi, zt, scale * zi @ zt.T


def _hf_outputs(out, images, tokens):
    import transformers

    cls = transformers.AutoModel.from_pretrained(str(out)).eval()
    pixels = torch.tensor(images).permute(0, 3, 1, 2)
    ids = torch.tensor(tokens).long()
    with torch.no_grad():
        # SigLIP was trained without an attention mask; CLIP pads after EOS, masked or not.
        result = cls(input_ids=ids, pixel_values=pixels)
    norm = lambda x: (x / x.norm(dim=-1, keepdim=True)).numpy()  # noqa: E731
    return norm(result.image_embeds), norm(result.text_embeds), result.logits_per_image.numpy()


@pytest.mark.parametrize("name", list(SHAPES))
def test_export_matches_transformers_and_round_trips(name, tmp_path):
    model, params, meta, (images, tokens) = _random_model(name)
    target = hf_export.choose_target(meta)
    assert ("CLIPModel" if name.startswith("clip") else "SiglipModel") == target.name
    out = epath.Path(tmp_path / "hf")
    out.mkdir()
    hf_export.write(out, params, meta, target)
    for want, got in zip(
        _vlax_outputs(model, params, images, tokens), _hf_outputs(out, images, tokens), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # import(export(params)) == params, exactly.
    imported_config, imported, size = hf_import.read_two_tower(str(out))
    assert size == meta["data"]["image_size"]
    a, b = mapping.flatten_params(params), mapping.flatten_params(imported)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # An imported model re-exported gives identical tensors.
    again = epath.Path(tmp_path / "again")
    again.mkdir()
    reimport_meta = dict(meta, model_config=imported_config)
    hf_export.write(again, imported, reimport_meta, hf_export.choose_target(reimport_meta))
    first, second = (
        load_file(str(out / "model.safetensors")),
        load_file(str(again / "model.safetensors")),
    )
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_bf16_params_export_to_fp32(tmp_path):
    model, params, meta, (images, tokens) = _random_model("clip_a")
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out = epath.Path(tmp_path)
    hf_export.write(out, bf16, meta, hf_export.choose_target(meta))
    state = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in state.values()} == {np.dtype("float32")}
    upcast = jax.tree.map(lambda x: x.astype(jnp.float32), bf16)
    for want, got in zip(
        _vlax_outputs(model, upcast, images, tokens), _hf_outputs(out, images, tokens), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _meta_with(name, **changes):
    _, _, meta, _ = _random_model(name)
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in meta["model_config"].items()}
    for key, value in changes.items():
        tower, _, field = key.partition(".")
        if field:
            config[tower][field] = value
        else:
            config[tower] = value
    return dict(meta, model_config=config)


@pytest.mark.parametrize(
    "name, changes, message",
    [
        ("clip_a", {"image.pool_type": "gap"}, r"CLIPModel: model.image.pool_type='gap'"),
        ("clip_a", {"text.pool_type": "mean"}, r"model.text.pool_type='mean' \(the target needs"),
        ("clip_a", {"image.posemb": "sincos2d"}, "model.image.posemb='sincos2d'"),
        ("clip_a", {"loss": "sigmoid"}, "CLIPModel has no logit bias"),
        ("clip_a", {"text.eos_id": 2}, "legacy argmax pooling"),
        ("clip_a", {"text.post_norm": True, "text.final_norm": False}, "model.text.post_norm"),
        ("siglip_a", {"text.mask_padding": True}, r"SiglipModel: .*model.text.mask_padding"),
        ("siglip_a", {"loss": "softmax"}, "SiglipModel is the sigmoid loss"),
    ],
)
def test_refusals_name_the_mismatch_and_the_alternative(name, changes, message):
    meta = _meta_with(name, **changes)
    with pytest.raises(output.ExportError, match=message) as err:
        hf_export.choose_target(meta)
    assert "--format torch" in str(err.value)


def test_siglip_needs_a_canonicalising_tokenizer():
    meta = _meta_with("siglip_a")
    meta["tokenizer"] = {"path": "x.model", "canonicalize": False}
    with pytest.raises(output.ExportError, match="canonicalize=True"):
        hf_export.choose_target(meta)


def _write_config(path, hf):
    import json

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf))


@pytest.mark.parametrize(
    "hf, message",
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "architecture 'GPT2LMHeadModel' is not supported"),
        (
            {
                "architectures": ["CLIPModel"],
                "vision_config": {"hidden_act": "relu"},
                "text_config": {},
            },
            r"vision_config.hidden_act='relu' is not supported",
        ),
        (
            {
                "architectures": ["CLIPModel"],
                "vision_config": {"image_size": [224, 160]},
                "text_config": {},
            },
            "vision_config.image_size=.* is not square",
        ),
        (
            {
                "architectures": ["SiglipModel"],
                "vision_config": {"vision_use_head": False},
                "text_config": {},
            },
            "vision_use_head=False",
        ),
    ],
)
def test_unsupported_transformers_directories_are_named(tmp_path, hf, message):
    _write_config(tmp_path, hf)
    with pytest.raises(mapping.InteropError, match=message):
        hf_import.read_two_tower(str(tmp_path))


def test_missing_or_extra_tensors_are_named(tmp_path):
    from safetensors.numpy import save_file

    model, params, meta, _ = _random_model("clip_b")
    out = epath.Path(tmp_path)
    hf_export.write(out, params, meta, hf_export.choose_target(meta))
    state = load_file(str(out / "model.safetensors"))
    state["vision_model.extra.weight"] = np.zeros(3, np.float32)
    del state["text_projection.weight"]
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(mapping.MappingError, match=r"vision_model.extra.weight.*txt/head/kernel"):
        hf_import.read_two_tower(str(out))
