"""`python -m experiments.predict`: generated text per image, zero-shot labels, clear errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import objectives
from data import preprocess
from experiments.training import checkpointing, config_utils, inputs, trainer

from .conftest import TINY_SOURCE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _predict(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, "-m", "experiments.predict", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (folder / "broken.png").write_bytes(b"not an image")
    return paths, str(folder / "broken.png")


@pytest.fixture(scope="module")
def simvlm_run(shapes_data_dir, tmp_path_factory):
    config = config_utils.load_config(
        "experiments/configs/simvlm/tiny.py:runlocal",
        [
            f"data.data_dir={shapes_data_dir}",
            "data.image_size=32",
            "total_steps=2",
            "batch_size=8",
        ]
        + [f"data.source.{k}={v}" for k, v in TINY_SOURCE.items()],
    )
    config.unlock()
    config.data.mix = ()  # the captions only: no VQA set to build
    config.evals = {}
    workdir = str(tmp_path_factory.mktemp("simvlm"))
    trainer.train(config, workdir)
    return workdir


@pytest.mark.slow
def test_generates_one_line_per_image(simvlm_run, images):
    paths, _ = images
    proc = _predict(
        f"--workdir={simvlm_run}",
        "--images",  # the README's form: one flag, the files after it
        *paths,
        "--decode=beam:2",
        "--max_new_tokens=5",
        "--prompt=a small",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == paths
    assert all(float(line.split("\t")[2]) <= 0 for line in lines)  # a log-probability


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--decode=nucleus"], "--decode 'nucleus'"),
        (["--prompt=" + "word " * 40], "the prompt has .* tokens; the model's text length is"),
        (["--labels=a,b"], "--labels needs a contrastive run"),
    ],
)
def test_bad_input_is_a_clear_error(simvlm_run, images, args, message):
    import re

    paths, _ = images
    proc = _predict(f"--workdir={simvlm_run}", f"--images={paths[0]}", *args)
    assert proc.returncode != 0 and re.search(message, proc.stderr), proc.stderr[-2000:]


@pytest.mark.slow
def test_unreadable_image_is_named(simvlm_run, images):
    _, broken = images
    proc = _predict(f"--workdir={simvlm_run}", f"--images={broken}")
    assert proc.returncode != 0 and f"cannot read image {broken}" in proc.stderr


@pytest.mark.slow
def test_zero_shot_labels_of_a_contrastive_run(make_config, images, tmp_path):
    config = make_config(steps=2)
    trainer.train(config, str(tmp_path))
    paths, _ = images
    proc = _predict(
        f"--workdir={tmp_path}",
        *[f"--images={p}" for p in paths],
        "--labels=red circle,blue square,green cross",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line, path in zip(proc.stdout.strip().splitlines(), paths, strict=True):
        assert line.startswith(path)
        probs = [float(x.split(": ")[1]) for x in line[len(path) :].strip().split("  ")]
        assert len(probs) == 3 and abs(sum(probs) - 1) < 2e-3


def _printed_probabilities(stdout, paths):
    """{path: {label: probability}} from predict's zero-shot lines."""
    out = {}
    for line, path in zip(stdout.strip().splitlines(), paths, strict=True):
        assert line.startswith(path)
        pairs = [x.rsplit(": ", 1) for x in line[len(path) :].strip().split("  ")]
        out[path] = {label: float(p) for label, p in pairs}
    return out


@pytest.mark.slow
def test_siglip_probabilities_are_the_objectives_sigmoids(make_config, images, tmp_path):
    # A SigLIP scale above CLIP's cap of 100: the sigmoid loss never caps it.
    config = make_config(loss="sigmoid", steps=2)
    config.model.temperature_init = 300.0
    trainer.train(config, str(tmp_path))
    paths, _ = images
    labels = ["red circle", "blue square", "green cross"]
    proc = _predict(f"--workdir={tmp_path}", "--images", *paths, "--labels=" + ",".join(labels))
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = _printed_probabilities(proc.stdout, paths)

    # The same probabilities by hand: the towers' embeddings, prompt-averaged class
    # embeddings, then sigmoid(exp(log_temp) * cosine + bias) with the trained parameters.
    meta, _ = checkpointing.read_meta(str(tmp_path))
    params, _ = checkpointing.load_params(str(tmp_path))
    model = objectives.get_objective(meta["objective"])(**meta["model_config"])
    tokenizer = inputs.recorded_tokenizer(meta)
    data, templates = meta["data"], ["a photo of a {}.", "{}"]  # predict's default templates
    prompts = [t.format(label) for label in labels for t in templates]
    text = np.asarray(
        model.apply(
            {"params": params},
            tokenizer.encode(prompts, int(data["max_len"])),
            method="embed_text",
        ),
        np.float64,
    ).reshape(len(labels), len(templates), -1)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    classes = text.mean(axis=1)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    pixels = np.stack(
        [
            preprocess.normalize(
                preprocess.resize(np.asarray(Image.open(p).convert("RGB")), data["image_size"]),
                data.get("mean", 0.5),
                data.get("std", 0.5),
            )
            for p in paths
        ]
    )
    image = np.asarray(model.apply({"params": params}, pixels, method="embed_image"), np.float64)
    scale, bias = np.exp(float(params["log_temp"])), float(params["logit_bias"])
    assert scale > 100
    cosine = image @ classes.T

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    expected = sigmoid(scale * cosine + bias)
    capped = sigmoid(100.0 * cosine + bias)
    got = np.array([[printed[p][label] for label in labels] for p in paths])
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-6)
    assert not np.allclose(got, capped, rtol=2e-3, atol=1e-6)  # the cap would show
