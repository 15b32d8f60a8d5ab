"""VQA: generate an answer per (image, question), score it against the reference answer(s).

The data's task puts the question in the prompt ("prompt" [b, P], "prompt_len" [b]); the
objective's `generate` continues it (contract in experiments.evaluators.captioning). Answers
and references are compared after the VQA benchmark's normalisation
(`text_metrics.vqa_normalize`): exact match against a single reference, the official soft
accuracy (min(1, #matches / 3), leave-one-out averaged) against several.

A row's references are the data's `texts(field, ...)` entry at its "text_index", the
example whose image and question the row holds (see experiments.evaluators).

The chance level is the majority-answer baseline: the accuracy of always answering the most
frequent (normalised) answer of the rows' references, so it is a split-optimal constant.

Config (`config.evals.<name>`):
  type="vqa", data (dataset spec for make_data), split, batch_size (rows per generate call),
  every_steps (default 0: only at the end), max_examples (default all), max_new_tokens
  (default: the data info's "max_new_tokens", else its "max_len"), decode (default "greedy"),
  task (the data task for make_data, default "vqa"), references (text field; default
  "answers" if the data has it, else "answer").
"""

from collections import Counter
from typing import Any

import numpy as np

from experiments import evaluators
from experiments.evaluators import captioning, text_metrics

_REQUIRED = ("data", "split", "batch_size")
_OPTIONAL = {
    "every_steps": 0,
    "max_examples": None,
    "max_new_tokens": None,
    "decode": "greedy",
    "task": "vqa",
    "references": None,
}


def majority_answer(references: list[list[str]]) -> str:
    """The most frequent normalised answer over all references (ties: first seen)."""
    counts = Counter(text_metrics.vqa_normalize(a) for refs in references for a in refs)
    return counts.most_common(1)[0][0]


def mean_accuracy(predictions: list[str], references: list[list[str]]) -> float:
    """Mean `vqa_accuracy` over examples."""
    return float(
        np.mean(
            [text_metrics.vqa_accuracy(p, r) for p, r in zip(predictions, references, strict=True)]
        )
    )


@evaluators.register("vqa")
class VqaEvaluator:
    """VQA accuracy of generated answers.

    `run` returns {"accuracy", "chance_accuracy", "num_examples"}.
    """

    def __init__(self, config: Any, *, make_data: evaluators.MakeData):
        cfg = evaluators.check_config(
            config, type_name="vqa", required=_REQUIRED, optional=_OPTIONAL
        )
        where = f"vqa ({cfg['data']}:{cfg['split']})"
        self.every_steps = cfg["every_steps"]
        self.methods = ("generate",)
        self._batches_fn, info = make_data(cfg["data"], cfg["split"], task=cfg["task"])
        self.data = captioning.GenerativeData(
            cfg, info, where=where, reference_fields=("answers", "answer")
        )
        self._where = where
        self._chance: dict[bytes, float] = {}  # by the rows' text_index bytes

    def run(self, predict: evaluators.PredictFns) -> dict:
        """Generates an answer per valid row; returns flat float metrics."""
        out = captioning.generate_texts(self.data, self._batches_fn, predict["generate"])
        num = len(out.texts)
        if not num:
            raise ValueError(f"{self._where}: the eval split has no valid (mask=True) examples")
        refs = self.data.references(out.text_index)
        key = out.text_index.tobytes()
        if key not in self._chance:
            self._chance[key] = mean_accuracy([majority_answer(refs)] * num, refs)
        return {
            "accuracy": mean_accuracy(out.texts, refs),
            "chance_accuracy": self._chance[key],
            "num_examples": float(num),
        }
