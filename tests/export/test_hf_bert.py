"""Tests for experiments/interop/hf_bert.py (and its writing half, hf_export.write_bert)
against `transformers.BertModel`: the real all-MiniLM-L6-v2 weights, random-weight round
trips, and refusals."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
import torch
from safetensors import numpy as safetensors_np
from transformers import AutoTokenizer, BertModel

from data.hf_tokenizer import HFTokenizer
from experiments.export import hf_export
from experiments.interop import hf_bert, mapping
from models import text
from tests.models.test_layers import random_params

SENTENCES = [
    "A photo of a cat.",
    "Two dogs play fetch on the beach at sunset.",
    "The quick brown fox jumps over the lazy dog, then naps in the shade.",
    "hello",
]


def bert_forward(model: BertModel, ids: np.ndarray) -> np.ndarray:
    """BertModel's last hidden state [B, L, D] (fp32), padding masked as transformers does."""
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(ids != model.config.pad_token_id).long(),
        )
    return out.last_hidden_state.numpy()


def vlax_forward(text_config: dict, params, ids: np.ndarray):
    model = text.TextTransformer(**text_config)
    with jax.default_matmul_precision("highest"):
        out, aux = jax.jit(model.apply)({"params": params}, ids)
    return np.asarray(out), np.asarray(aux["tokens"])


def test_minilm_sentence_embeddings_match_transformers():
    model_dir = hf_bert.minilm_dir()
    ids = HFTokenizer(model_dir / "tokenizer.json").encode(SENTENCES, 24)
    reference = AutoTokenizer.from_pretrained(str(model_dir))(
        SENTENCES, padding="max_length", max_length=24, truncation=True, return_tensors="np"
    )
    np.testing.assert_array_equal(ids, reference["input_ids"])

    text_config, params = hf_bert.import_bert(model_dir)
    assert text_config["width"] == 384 and text_config["depth"] == 6
    hidden = bert_forward(BertModel.from_pretrained(str(model_dir), add_pooling_layer=False), ids)
    weights = reference["attention_mask"][..., None].astype(np.float32)
    expected = (hidden * weights).sum(1) / weights.sum(1)  # sentence-transformers mean pooling
    embeddings, _ = vlax_forward(text_config, params, ids)
    assert embeddings.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(embeddings, expected, rtol=0, atol=1e-5)
    # Real embeddings: the two animal captions are nearer each other than to "hello".
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[3]


SHAPES = [
    dict(width=32, depth=2, num_heads=4, mlp_dim=64, vocab_size=100, max_len=16),
    dict(
        width=48,
        depth=3,
        num_heads=3,
        mlp_dim=80,
        vocab_size=77,
        max_len=20,
        type_vocab_size=1,
        pad_id=1,
        norm_eps=1e-5,
    ),
]


def bert_tower(shape: dict) -> tuple[dict, dict, np.ndarray]:
    """A random-weight BERT-style tower: (text_config, params, token ids [3, 10])."""
    hf = dict(
        hidden_size=shape["width"],
        num_hidden_layers=shape["depth"],
        num_attention_heads=shape["num_heads"],
        intermediate_size=shape["mlp_dim"],
        vocab_size=shape["vocab_size"],
        max_position_embeddings=shape["max_len"],
        type_vocab_size=shape.get("type_vocab_size", 2),
        pad_token_id=shape.get("pad_id", 0),
        layer_norm_eps=shape.get("norm_eps", 1e-12),
    )
    text_config = hf_bert.vlax_text_config(hf)
    pad = text_config["pad_id"]
    ids = np.random.default_rng(0).integers(2, shape["vocab_size"], (3, 10)).astype(np.int32)
    ids[0, 6:] = pad
    ids[1, 3:] = pad
    params = random_params(text.TextTransformer(**text_config), ids)["params"]
    return text_config, jax.device_get(params), ids


@pytest.mark.parametrize("shape", SHAPES, ids=["w32", "w48"])
def test_export_import_round_trip_and_transformers_parity(shape, tmp_path):
    text_config, params, ids = bert_tower(shape)
    out_dir = hf_export.write_bert(params, text_config, tmp_path / "bert")
    with safetensors.safe_open(str(out_dir / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
    config_back, params_back = hf_bert.import_bert(out_dir)
    assert config_back == text_config
    jax.tree.map(np.testing.assert_array_equal, params_back, params)

    model, info = BertModel.from_pretrained(
        str(out_dir), add_pooling_layer=False, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    hidden = bert_forward(model, ids)
    _, tokens = vlax_forward(text_config, params, ids)
    np.testing.assert_allclose(tokens, hidden, rtol=0, atol=1e-5)

    # The same tower scanned exports the same tensors.
    blocks = [params["encoder"][f"block_{i}"] for i in range(shape["depth"])]
    scanned = params | {"encoder": {"blocks": jax.tree.map(lambda *a: np.stack(a), *blocks)}}
    exported = safetensors_np.load_file(str(out_dir / "model.safetensors"))
    state = mapping.to_torch(scanned, hf_bert.rules("", ""))
    jax.tree.map(np.testing.assert_array_equal, state, exported)


def test_imports_prefixed_checkpoints_and_the_two_tower_table(tmp_path):
    text_config, params, _ = bert_tower(SHAPES[0])
    out_dir = hf_export.write_bert(params, text_config, tmp_path / "plain")
    state = safetensors_np.load_file(str(out_dir / "model.safetensors"))
    # A BertFor* checkpoint: "bert." names, plus a pooler and position ids to skip.
    prefixed = {f"bert.{k}": v for k, v in state.items()}
    prefixed["bert.pooler.dense.weight"] = np.zeros((32, 32), np.float32)
    prefixed["bert.embeddings.position_ids"] = np.arange(16)[None]
    (tmp_path / "prefixed").mkdir()
    (tmp_path / "prefixed" / "config.json").write_text((out_dir / "config.json").read_text())
    safetensors_np.save_file(prefixed, str(tmp_path / "prefixed" / "model.safetensors"))
    _, params_back = hf_bert.import_bert(tmp_path / "prefixed")
    jax.tree.map(np.testing.assert_array_equal, params_back, params)
    # In a two-tower model the tower sits under "txt/".
    assert mapping.to_torch({"txt": params}, hf_bert.rules()).keys() == state.keys()


def test_refusals(tmp_path):
    hf = json.loads((hf_bert.minilm_dir() / "config.json").read_text())
    for field, value in [
        ("hidden_act", "relu"),
        ("position_embedding_type", "relative_key"),
        ("is_decoder", True),
    ]:
        with pytest.raises(ValueError, match=field):
            hf_bert.vlax_text_config(hf | {field: value})

    text_config, params, _ = bert_tower(SHAPES[0])
    with pytest.raises(ValueError, match="post_norm"):
        hf_export.write_bert(params, text_config | {"post_norm": False}, tmp_path / "x")
    with pytest.raises(ValueError, match="activation"):
        hf_export.write_bert(params, text_config | {"activation": "gelu_tanh"}, tmp_path / "x")
    projected = text_config | {"num_classes": 8}
    with pytest.raises(ValueError, match="num_classes"):
        hf_export.write_bert(params, projected, tmp_path / "x")
    # A parameter BertModel has no place for is named.
    head = {"kernel": jnp.zeros((32, 8)), "bias": jnp.zeros(8)}
    with pytest.raises(mapping.MappingError, match="'head/(kernel|bias)'"):
        mapping.to_torch(params | {"head": head}, hf_bert.rules("", ""))

    out_dir = hf_export.write_bert(params, text_config, tmp_path / "ok")
    state = safetensors_np.load_file(str(out_dir / "model.safetensors"))
    extra = state | {"encoder.layer.0.attention.self.rotary.weight": np.zeros(3, np.float32)}
    missing = {k: v for k, v in state.items() if k != "embeddings.LayerNorm.weight"}
    for name, bad, match in [
        ("extra", extra, "attention.self.rotary.weight"),
        ("missing", missing, "embedding_norm/scale"),
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text((out_dir / "config.json").read_text())
        safetensors_np.save_file(bad, str(tmp_path / name / "model.safetensors"))
        with pytest.raises(mapping.MappingError, match=match):
            hf_bert.import_bert(tmp_path / name)
