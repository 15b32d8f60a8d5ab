r"""Predictions for people: captions / answers for image files, or zero-shot labels.

    python -m experiments.predict --workdir workdirs/simvlm_tiny --images a.png b.jpg \
        [--prompt "a photo of" | --question "what colour is the circle?"] \
        [--decode greedy|beam:4|sample:temperature=0.7,top_p=0.9,seed=0] [--max_new_tokens 32]
    python -m experiments.predict --workdir workdirs/clip_tiny_demo --images a.png \
        --labels "red circle,blue square,green cross"

Generative runs (any objective with a `generate` method) print one line per image: the file,
the generated text and its log-probability. Contrastive runs print each image's zero-shot
probabilities over `--labels`. The model, tokenizer and preprocessing come from the workdir
alone; every input is checked (files readable, prompt length, decoding mode) before anything
compiles.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import objectives  # noqa: E402
from data import preprocess, user_pairs  # noqa: E402
from experiments.training import checkpointing, cli, inputs, run_meta  # noqa: E402
from models import generation  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_IMAGES = flags.DEFINE_multi_string("images", [], "Image files (repeat the flag or list them).")
_PROMPT = flags.DEFINE_string("prompt", None, "Text prefix to continue (captioning).")
_QUESTION = flags.DEFINE_string("question", None, "A question (VQA runs).")
_DECODE = flags.DEFINE_string("decode", "greedy", "greedy | beam:K | sample:temperature=...")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Default: the run's text length.")
_LABELS = flags.DEFINE_string("labels", None, "Comma-separated class names (contrastive runs).")
flags.mark_flags_as_required(["workdir"])


class PredictError(ValueError):
    """Bad input to the prediction command; the message says what to fix."""


def load_images(paths, data: dict) -> np.ndarray:
    """Decodes and preprocesses image files as the run's eval transform: [n, S, S, 3]."""
    if not paths:
        raise PredictError("give at least one image with --images")
    out = []
    for path in paths:
        try:
            image = user_pairs.load_rgb(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file: say which and why
            raise PredictError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
        image = preprocess.resize(image, int(data["image_size"]))
        out.append(preprocess.normalize(image, data.get("mean", 0.5), data.get("std", 0.5)))
    return np.stack(out)


def zero_shot(model, params, tokenizer, images, labels, templates, max_len) -> np.ndarray:
    """[n, C] probabilities (softmax of the logit scale times cosine similarity)."""
    prompts = [t.replace("{}", label) for label in labels for t in templates]
    text = np.asarray(
        model.apply({"params": params}, tokenizer.encode(prompts, max_len), method="embed_text")
    )
    text = text.reshape(len(labels), len(templates), -1).mean(axis=1)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    image = np.asarray(model.apply({"params": params}, images, method="embed_image"))
    logits = np.exp(min(float(params["log_temp"]), np.log(100.0))) * image @ text.T
    logits -= logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _templates(config) -> list[str]:
    for evaluator in (config.get("evals") or {}).values():
        if evaluator.get("type") == "zero_shot" and evaluator.get("templates"):
            return list(evaluator["templates"])
    return ["a photo of a {}.", "{}"]


def generate(model, params, tokenizer, images, prompt: str, *, max_len, max_new, decode):
    """[(text, log-probability)] per image for a generative objective."""
    ids = tokenizer.encode([prompt], max_len, add_eos=False) if prompt else None
    length = int((ids != tokenizer.pad_id).sum()) if prompt else 0
    if prompt and length >= max_len:
        raise PredictError(
            f"the prompt has {length} tokens; the model's text length is {max_len}: shorten it"
        )
    n = len(images)
    prompts = np.zeros((n, max_len), np.int32) if ids is None else np.repeat(ids, n, axis=0)
    lengths = np.full((n,), length, np.int32)
    out = model.apply(
        {"params": params},
        images,
        prompts,
        lengths,
        method="generate",
        max_new_tokens=max_new,
        decode=decode,
    )
    texts = tokenizer.decode(np.asarray(out["tokens"]))
    return list(zip(texts, np.asarray(out["scores"]).tolist(), strict=True))


def main():
    try:
        run(_WORKDIR.value, list(_IMAGES.value))
    except PredictError as e:
        raise app.UsageError(str(e)) from None


def run(workdir: str, image_paths: list[str]) -> None:
    """Prints the predictions for `image_paths` (see the module docstring)."""
    config = run_meta.load_run_config(workdir)
    meta, step = checkpointing.read_meta(workdir, _STEP.value)
    data = meta["data"]
    images = load_images(image_paths, data)
    model = objectives.get_objective(meta["objective"])(**meta["model_config"])
    tokenizer = inputs.recorded_tokenizer(meta)
    max_len = int(data["max_len"])
    if _LABELS.value:
        labels = [x.strip() for x in _LABELS.value.split(",") if x.strip()]
        if not callable(getattr(model, "embed_image", None)) or not labels:
            raise PredictError("--labels needs a contrastive run and at least one label")
        params, _ = checkpointing.load_params(workdir, step)
        probs = zero_shot(model, params, tokenizer, images, labels, _templates(config), max_len)
        for path, row in zip(image_paths, probs, strict=True):
            ranked = sorted(zip(labels, row, strict=True), key=lambda x: -x[1])
            print(path, "  ".join(f"{label}: {p:.3f}" for label, p in ranked))
        return
    if not callable(getattr(model, "generate", None)):
        raise PredictError(f"objective {meta['objective']!r} does not generate; use --labels")
    if _PROMPT.value and _QUESTION.value:
        raise PredictError("give --prompt or --question, not both")
    try:
        generation.parse_mode(_DECODE.value)
    except ValueError as e:
        raise PredictError(f"--decode {_DECODE.value!r}: {e}") from None
    params, _ = checkpointing.load_params(workdir, step)
    rows = generate(
        model,
        params,
        tokenizer,
        images,
        _QUESTION.value or _PROMPT.value or "",
        max_len=max_len,
        max_new=_MAX_NEW.value or max_len,
        decode=_DECODE.value,
    )
    for path, (text, score) in zip(image_paths, rows, strict=True):
        print(f"{path}\t{text}\t{score:.3f}")


if __name__ == "__main__":
    cli.run(main, list_flags=("images",))
