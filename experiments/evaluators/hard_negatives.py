"""Hard-negative caption accuracy (Winoground-style image score) on data with hard negatives.

Each example has a true caption and a hard negative that differs from it only by swapped or
replaced attributes ("a small red circle left of a large blue square" vs "... a large red
circle ..."), false for the image. The metric is how often the image's embedding is closer to
its true caption than to the negative: a bag-of-words model that ignores which attribute
goes with which object stays near chance (0.5).

Config (`config.evals.<name>`):
  type="hard_negatives", data (dataset spec whose examples have "hard_negative"), split,
  batch_size (rows per embed call), every_steps (default 0: only at the end), max_examples.
"""

from typing import Any

import numpy as np

from experiments import evaluators
from experiments.evaluators import metrics

_REQUIRED = ("data", "split", "batch_size")
_OPTIONAL = {"every_steps": 0, "max_examples": None}
_NEGATIVE = "hard_negative"


@evaluators.register("hard_negatives")
class HardNegativeEvaluator:
    """`run` returns {"accuracy", "chance_accuracy", "num_examples"}."""

    def __init__(self, config: Any, *, make_data: evaluators.MakeData):
        cfg = evaluators.check_config(
            config, type_name="hard_negatives", required=_REQUIRED, optional=_OPTIONAL
        )
        self.every_steps = cfg["every_steps"]
        self.methods = evaluators.CONTRASTIVE_METHODS
        self.batch_size = int(cfg["batch_size"])
        self.max_examples = cfg["max_examples"]
        where = f"hard_negatives ({cfg['data']}:{cfg['split']})"
        # Only this evaluator asks the data for the negatives: training never carries them.
        self._batches_fn, info = make_data(cfg["data"], cfg["split"], extra_texts=(_NEGATIVE,))
        evaluators.require_fields(info, (_NEGATIVE,), where)

    def run(self, predict: evaluators.PredictFns) -> dict:
        embed_image, embed_text = predict["embed_image"], predict["embed_text"]
        keys = ("image", "tokens", f"{_NEGATIVE}_tokens")
        embedded: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for chunk, n in evaluators.valid_chunks(
            self._batches_fn, keys, batch_size=self.batch_size, max_examples=self.max_examples
        ):
            for key in keys:
                fn = embed_image if key == "image" else embed_text
                embedded[key].append(evaluators.embed_chunk(fn, chunk[key], n))
        if not embedded["image"]:
            raise ValueError("hard_negatives: the eval split has no valid (mask=True) examples")
        image, caption, negative = (np.concatenate(embedded[k]) for k in keys)
        out = metrics.hard_negative_accuracy(image, caption, negative)
        out["num_examples"] = float(len(image))
        return out
