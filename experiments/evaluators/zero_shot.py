"""Zero-shot classification: images against prompt-averaged class-name embeddings.

Each class name is put into every prompt template ("a photo of a {}."), the C*T prompts are
embedded by the text tower, averaged per class (`metrics.class_embeddings`), and every image is
classified by cosine similarity. Reports top-k accuracy next to its chance level.

Config (`config.evals.<name>`):
  type="zero_shot", data (dataset spec for make_data), split, batch_size (rows per embed call),
  every_steps (default 0: only at the end), max_examples (default all), ks (default (1, 5)),
  class_names / templates (default: the dataset info's; templates contain "{}").
"""

from typing import Any

import numpy as np

from experiments import evaluators
from experiments.evaluators import metrics

_REQUIRED = ("data", "split", "batch_size")
_OPTIONAL = {
    "every_steps": 0,
    "max_examples": None,
    "ks": (1, 5),
    "class_names": None,
    "templates": None,
}


def build_prompts(class_names: list[str], templates: list[str]) -> list[str]:
    """The C*T prompts in class-major order: template t of class c is at c*T + t."""
    return [t.replace("{}", name) for name in class_names for t in templates]


@evaluators.register("zero_shot")
class ZeroShotEvaluator:
    """Top-k zero-shot accuracy on a labelled image split.

    `run` returns {"top{k}", "chance_top{k}" for k <= C, "num_examples"}.
    """

    def __init__(self, config: Any, *, make_data: evaluators.MakeData):
        cfg = evaluators.check_config(
            config, type_name="zero_shot", required=_REQUIRED, optional=_OPTIONAL
        )
        self.every_steps = cfg["every_steps"]
        self.methods = evaluators.CONTRASTIVE_METHODS
        self.batch_size = int(cfg["batch_size"])
        self.max_examples = cfg["max_examples"]
        self.ks = tuple(int(k) for k in cfg["ks"])
        self._batches_fn, info = make_data(cfg["data"], cfg["split"])

        where = f"zero_shot ({cfg['data']}:{cfg['split']})"
        evaluators.require_fields(info, ("label",), where)
        class_names = cfg["class_names"] or evaluators.info_field(info, "class_names")
        templates = cfg["templates"] or evaluators.info_field(info, "templates")
        if not class_names:
            raise ValueError(f"{where}: no class names in the config or the dataset info")
        if not templates:
            raise ValueError(f"{where}: no prompt templates in the config or the dataset info")
        self.class_names = [str(c) for c in class_names]
        self.templates = [str(t) for t in templates]
        bad = [t for t in self.templates if "{}" not in t]
        if bad:
            raise ValueError(f"{where}: templates without a '{{}}' placeholder: {bad}")
        encode_texts = evaluators.info_field(info, "encode_texts")
        if encode_texts is None:
            raise ValueError(f"{where}: the dataset info has no encode_texts")

        # Tokenised once: the prompts do not change during training.
        self.prompt_tokens = np.asarray(
            encode_texts(build_prompts(self.class_names, self.templates))
        )
        expected = len(self.class_names) * len(self.templates)
        if self.prompt_tokens.ndim != 2 or self.prompt_tokens.shape[0] != expected:
            raise ValueError(
                f"{where}: encode_texts returned {self.prompt_tokens.shape} for {expected} prompts"
            )

    def class_embeddings(self, embed_text: evaluators.EmbedFn) -> np.ndarray:
        """[C, D] prompt-averaged, L2-normalised class embeddings."""
        text_emb = evaluators.embed_all(embed_text, self.prompt_tokens, self.batch_size)
        return metrics.class_embeddings(text_emb, num_templates=len(self.templates))

    def run(self, predict: evaluators.PredictFns) -> dict:
        """Embeds the prompts and every valid image; returns flat float metrics."""
        embed_image, embed_text = predict["embed_image"], predict["embed_text"]
        class_emb = self.class_embeddings(embed_text)
        image_emb, labels = [], []
        for chunk, n in evaluators.valid_chunks(
            self._batches_fn,
            ("image",),
            batch_size=self.batch_size,
            max_examples=self.max_examples,
            host_keys=("label",),
        ):
            image_emb.append(evaluators.embed_chunk(embed_image, chunk["image"], n))
            labels.append(chunk["label"][:n])
        if not image_emb:
            raise ValueError("zero_shot: the eval split has no valid (mask=True) examples")
        labels = np.concatenate(labels)
        out = metrics.zero_shot_accuracy(np.concatenate(image_emb), class_emb, labels, ks=self.ks)
        out["num_examples"] = float(len(labels))
        return out
