"""Image<->text retrieval: Recall@k in both directions over an eval split of captioned images.

Each valid batch row is one (image, caption) pair, so the split gives N images and N captions
with caption i describing image i. Captions with identical text (the same token row) are
treated as one caption shared by their images: a model cannot rank equal texts apart, and
synthetic data repeats captions ("a large red circle"), so scoring them as wrong would only
measure the tie rule.

Config (`config.evals.<name>`):
  type="retrieval", data (dataset spec for make_data), split, batch_size (rows per embed call),
  every_steps (default 0: only at the end), max_examples (default all), ks (default (1, 5, 10)).
"""

from typing import Any

import numpy as np

from experiments import evaluators
from experiments.evaluators import metrics

_REQUIRED = ("data", "split", "batch_size")
_OPTIONAL = {"every_steps": 0, "max_examples": None, "ks": (1, 5, 10)}


@evaluators.register("retrieval")
class RetrievalEvaluator:
    """Image->text and text->image Recall@k.

    `run` returns {"i2t_r@{k}", "t2i_r@{k}", "chance_i2t_r@{k}", "chance_t2i_r@{k}" for k <= N,
    "num_examples"}.
    """

    def __init__(self, config: Any, *, make_data: evaluators.MakeData):
        cfg = evaluators.check_config(
            config, type_name="retrieval", required=_REQUIRED, optional=_OPTIONAL
        )
        self.every_steps = cfg["every_steps"]
        self.batch_size = int(cfg["batch_size"])
        self.max_examples = cfg["max_examples"]
        self.ks = tuple(int(k) for k in cfg["ks"])
        self._batches_fn, _ = make_data(cfg["data"], cfg["split"])

    def run(self, embed_image: evaluators.EmbedFn, embed_text: evaluators.EmbedFn) -> dict:
        """Embeds every valid (image, caption) pair; returns flat float metrics."""
        image_emb, text_emb, tokens = [], [], []
        for chunk, n in evaluators.valid_chunks(
            self._batches_fn,
            ("image", "tokens"),
            batch_size=self.batch_size,
            max_examples=self.max_examples,
        ):
            image_emb.append(evaluators.embed_chunk(embed_image, chunk["image"], n))
            text_emb.append(evaluators.embed_chunk(embed_text, chunk["tokens"], n))
            tokens.append(np.asarray(chunk["tokens"])[:n])
        if not image_emb:
            raise ValueError("retrieval: the eval split has no valid (mask=True) examples")
        image_emb, text_emb = np.concatenate(image_emb), np.concatenate(text_emb)
        num = len(image_emb)
        _, caption_ids = np.unique(np.concatenate(tokens), axis=0, return_inverse=True)
        caption_ids = caption_ids.reshape(-1)
        out = metrics.grouped_retrieval_recall(
            image_emb, text_emb, caption_ids, caption_ids, ks=self.ks
        )
        out["distinct_captions"] = float(caption_ids.max() + 1)
        out["num_examples"] = float(num)
        return out
