r"""Predictions for people: captions / answers for image files, or zero-shot labels.

    python -m experiments.predict --workdir workdirs/simvlm_tiny --images a.png b.jpg \
        [--prompt "a photo of" | --question "what colour is the circle?"] \
        [--decode greedy|beam:4|sample:temperature=0.7,top_p=0.9,seed=0] [--max_new_tokens 32]
    python -m experiments.predict --workdir workdirs/clip_tiny_demo --images a.png \
        --labels "red circle,blue square,green cross"

Generative runs (any objective with a `generate` method) print one line per image: the file,
the generated text and its log-probability; the prompt (or question) is laid out as the data
tasks lay out what the evaluators generate from. Contrastive runs print each image's zero-shot
probabilities over `--labels`, as the trained loss models them (the objective's
`match_probabilities`): a softmax over the labels for CLIP, each label's independent match
probability for SigLIP (they need not sum to 1), against prompt-averaged class embeddings
built as the zero-shot evaluator builds them. The model, tokenizer and preprocessing come
from the workdir alone; every input is checked (files readable, prompt length, decoding mode)
before anything compiles.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import objectives  # noqa: E402
from data import preprocess, tasks, user_pairs  # noqa: E402
from experiments.evaluators import metrics  # noqa: E402
from experiments.evaluators import zero_shot as zero_shot_eval  # noqa: E402
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
    """[n, C] probabilities of n images [n, S, S, 3] over C labels, as the trained loss models
    them (`match_probabilities`: a softmax over the labels for CLIP, each label's own sigmoid
    for SigLIP), against the class embeddings the zero-shot evaluator builds."""

    def apply(method, *args):
        return np.asarray(model.apply({"params": params}, *args, method=method))

    prompts = tokenizer.encode(zero_shot_eval.build_prompts(labels, templates), max_len)
    classes = metrics.class_embeddings(apply("embed_text", prompts), len(templates))
    image_emb = apply("embed_image", images)
    return apply("match_probabilities", image_emb, classes.astype(image_emb.dtype))


def _templates(config) -> list[str]:
    for evaluator in (config.get("evals") or {}).values():
        if evaluator.get("type") == "zero_shot" and evaluator.get("templates"):
            return list(evaluator["templates"])
    return ["a photo of a {}.", "{}"]


def prompt_layout(tokenizer, max_len: int, text: str) -> tuple[np.ndarray, int]:
    """(int32 [max_len] prompt, its length): what generation starts from, in the eval layout
    of the data tasks (data/tasks.py `Task.prompt`: the text's pieces, no EOS, padded), as the
    captioning and VQA evaluators pass it to `generate`. The vqa task lays out the whole text
    (prefix_lm's prompt is a cut of a caption); no text is the empty prompt of captioning."""
    if not text.strip():
        return np.full((max_len,), tokenizer.pad_id, np.int32), 0
    layout = tasks.get_task("vqa", tokenizer, max_len).prompt({"question": text}, 0)
    length, pieces = int(layout["prompt_len"]), len(tokenizer.pieces([text])[0])
    if length < pieces:  # the task keeps room to generate and cuts the rest
        raise PredictError(
            f"the prompt has {pieces} tokens; the model's text length is {max_len}, which "
            f"leaves room for {length}: shorten it"
        )
    return layout["prompt"], length


def generate(model, params, tokenizer, images, prompt, prompt_len: int, *, max_new, decode):
    """[(text, log-probability)] per image [n, S, S, 3] for a generative objective, every image
    continuing the same prompt (int32 [L] and its length, from `prompt_layout`)."""
    n = len(images)
    out = model.apply(
        {"params": params},
        images,
        np.repeat(prompt[None], n, axis=0),
        np.full((n,), prompt_len, np.int32),
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
        if not callable(getattr(model, "match_probabilities", None)) or not labels:
            raise PredictError("--labels needs a contrastive run and at least one label")
        params, _ = checkpointing.load_params(workdir, step)
        probs = zero_shot(model, params, tokenizer, images, labels, _templates(config), max_len)
        for path, row in zip(image_paths, probs, strict=True):
            ranked = sorted(zip(labels, row, strict=True), key=lambda x: -x[1])
            print(path, "  ".join(f"{label}: {p:.4g}" for label, p in ranked))
        return
    if not callable(getattr(model, "generate", None)):
        raise PredictError(f"objective {meta['objective']!r} does not generate; use --labels")
    if _PROMPT.value and _QUESTION.value:
        raise PredictError("give --prompt or --question, not both")
    try:
        generation.parse_mode(_DECODE.value)
    except ValueError as e:
        raise PredictError(f"--decode {_DECODE.value!r}: {e}") from None
    prompt, prompt_len = prompt_layout(tokenizer, max_len, _QUESTION.value or _PROMPT.value or "")
    params, _ = checkpointing.load_params(workdir, step)
    rows = generate(
        model,
        params,
        tokenizer,
        images,
        prompt,
        prompt_len,
        max_new=_MAX_NEW.value or max_len,
        decode=_DECODE.value,
    )
    for path, (text, score) in zip(image_paths, rows, strict=True):
        print(f"{path}\t{text}\t{score:.3f}")


if __name__ == "__main__":
    cli.run(main, list_flags=("images",))
