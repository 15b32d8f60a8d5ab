"""`experiments.export` end to end: a trained run exported, loaded in a fresh process that
imports no vlax module, gives vlax's zero-shot predictions; every refusal says what to do."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from data import sources
from experiments.configs import common
from experiments.evaluators import metrics
from experiments.export import export_run, output
from experiments.training import checkpointing, run_meta, trainer
from tests.experiments.conftest import TINY_SOURCE, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    sources.get_source("vlax_shapes", "train", data_dir=path, **TINY_SOURCE)
    return path


def _config(data_dir, style):
    config = tiny_config(data_dir, steps=2, loss="softmax" if style == "clip" else "sigmoid")
    image, text = common.tiny_towers(style, out_dim=16)
    for tower in (image, text):
        tower.update(width=32, depth=1, mlp_dim=64, num_heads=2)
    if style == "siglip":
        text["num_classes"] = 32
        config.data.tokenizer.canonicalize = True
    config.model.image, config.model.text = image, text
    config.data.tokenizer.model = ""
    config.data.tokenizer.vocab_size = 64
    config.data.max_len = 12
    config.evals = {
        "zero_shot": dict(type="zero_shot", data="vlax_shapes", split="test", batch_size=16)
    }
    return config


@pytest.fixture(scope="module", params=["clip", "siglip"])
def trained(request, data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp(f"run_{request.param}"))
    out = trainer.train(_config(data_dir, request.param), workdir)
    return request.param, workdir, out


def _vlax_predictions(out, images, class_names, templates):
    s, params = out["setup"], jax.device_get(out["state"]["params"])
    prompts = [t.replace("{}", c) for c in class_names for t in templates]
    tokens = s.inputs.tokenizer.encode(prompts, s.inputs.max_len)
    text = np.asarray(s.model.apply({"params": params}, tokens, method="embed_text"))
    classes = metrics.class_embeddings(text, num_templates=len(templates))
    pixels = (images.astype(np.float32) / 255 - 0.5) / 0.5
    image = np.asarray(s.model.apply({"params": params}, pixels, method="embed_image"))
    return (metrics.l2_normalize(image) @ classes.T).argmax(axis=1)


_HF_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch, transformers

    out, images_path, classes_path = sys.argv[1:]
    images = np.load(images_path)
    spec = json.load(open(classes_path))
    model = transformers.AutoModel.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    prompts = [t.replace("{}", c) for c in spec["classes"] for t in spec["templates"]]
    ids = tokenizer(prompts, padding="max_length", truncation=True,
                    max_length=spec["max_len"], return_tensors="pt")["input_ids"]
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        # SigLIP was trained without an attention mask; CLIP pads after EOS (invisible).
        out = model(input_ids=ids, pixel_values=pixels)
    text = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    text = text.reshape(len(spec["classes"]), len(spec["templates"]), -1).mean(1)
    text = text / text.norm(dim=-1, keepdim=True)
    image = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                    ("jax", "flax", "experiments", "models", "objectives", "data"))
    print(json.dumps({"predictions": (image @ text.T).argmax(1).tolist(),
                      "model_class": type(model).__name__, "vlax_modules": loaded}))
    """
)


@pytest.mark.slow
def test_exported_model_predicts_like_vlax_in_a_fresh_process(trained, data_dir, tmp_path):
    style, workdir, out = trained
    summary = export_run.export_run(workdir, "hf", str(tmp_path / "hf"))
    assert summary["target"] == {"clip": "CLIPModel", "siglip": "SiglipModel"}[style]
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "tokenizer_config.json",
    } <= files
    assert ("tokenizer.json" if style == "clip" else "spiece.model") in files
    assert "zero_shot" in (tmp_path / "hf" / "README.md").read_text()

    test = sources.get_source("vlax_shapes", "test", data_dir=data_dir, **TINY_SOURCE)
    images = np.stack([test[i]["image"] for i in range(48)])
    info = sources.dataset_info("vlax_shapes")
    classes, templates = info["class_names"], info["prompt_templates"]
    want = _vlax_predictions(out, images, classes, templates)
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "classes.json").write_text(
        json.dumps({"classes": classes, "templates": templates, "max_len": 12})
    )
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _HF_SCRIPT,
            str(tmp_path / "hf"),
            str(tmp_path / "images.npy"),
            str(tmp_path / "classes.json"),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["vlax_modules"] == [] and got["model_class"] == summary["target"]
    assert got["predictions"] == want.tolist()
    assert len(set(want.tolist())) > 1  # a model predicting one class would prove little


def test_export_refusals_say_what_to_do(trained, tmp_path):
    style, workdir, _ = trained
    with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
        export_run.export_run(str(tmp_path / "nowhere"), "hf", str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match=r"No checkpoint step 7 .* available: \[2\]"):
        export_run.export_run(workdir, "hf", str(tmp_path / "b"), step=7)
    with pytest.raises(output.ExportError, match="--format 'onnx' is unknown"):
        export_run.export_run(workdir, "onnx", str(tmp_path / "c"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(output.ExportError, match="already holds files; pass --overwrite"):
        export_run.export_run(workdir, "hf", str(busy))
    assert (busy / "keep.txt").read_text() == "mine"
    export_run.export_run(workdir, "torch", str(busy), overwrite=True)
    assert not (busy / "keep.txt").exists() and (busy / "model.safetensors").exists()


def test_old_format_checkpoint_is_refused_with_a_way_out(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), save_every=1, keep=1, async_save=False)
    ckpt.save(
        1,
        {"params": {"w": np.zeros(2)}},
        "{}",
        {"format_version": 1, "objective": "contrastive", "params": {}},
    )
    ckpt.close()
    assert run_meta.FORMAT_VERSION > 1
    with pytest.raises(output.ExportError, match="format version 1.*Resume the run for one step"):
        export_run.export_run(str(tmp_path), "hf", str(tmp_path / "out"))


def test_an_imported_model_evaluates_like_the_run(trained, tmp_path):
    from experiments import evaluate
    from experiments.interop import hf_import

    style, workdir, out = trained
    export_run.export_run(workdir, "hf", str(tmp_path / "hf"))
    config = evaluate.hf_config(run_meta.load_run_config(workdir), str(tmp_path / "hf"))
    tokenizer = config.data.tokenizer.model
    assert tokenizer.endswith("tokenizer.json" if style == "clip" else "spiece.model")
    results = evaluate.evaluate(
        config, hf_import.load_params(str(tmp_path / "hf")), str(tmp_path / "eval")
    )
    # Same weights, same token ids through the exported tokenizer: the same metrics.
    assert results["zero_shot"] == pytest.approx(out["results"]["zero_shot"], abs=1e-6)


def test_init_from_a_transformers_checkpoint_locks_the_tower(trained, data_dir, tmp_path):
    from experiments.interop import hf_import

    style, workdir, _ = trained
    export_run.export_run(workdir, "hf", str(tmp_path / "hf"))
    lit = _config(data_dir, style)
    lit.init = dict(hf=str(tmp_path / "hf"), load=("img",))
    lit.optim.freeze = ("img/.*",)
    lit.evals = {}
    params = jax.device_get(trainer.train(lit, str(tmp_path / "lit"))["state"]["params"])
    imported = hf_import.load_params(str(tmp_path / "hf"))
    for x, y in zip(jax.tree.leaves(imported["img"]), jax.tree.leaves(params["img"]), strict=True):
        np.testing.assert_array_equal(x, y)
    wrong = _config(data_dir, style)
    wrong.model.image.depth = 2
    wrong.init = dict(hf=str(tmp_path / "hf"), load=("img",))
    with pytest.raises(checkpointing.CheckpointMismatchError, match="tower 'img' does not match"):
        trainer.setup(wrong)
