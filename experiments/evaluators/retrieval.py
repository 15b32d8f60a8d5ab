"""Image<->text retrieval: Recall@k in both directions over an eval split of captioned images.

Each valid batch row is one (image, caption) pair, so the split gives N images and N captions
with caption i describing image i: the standard protocol, comparable with published figures.
With `group_identical_captions=True`, captions with exactly the same text are treated as one
caption shared by their images: a model cannot rank equal texts apart, and synthetic data
repeats captions ("a large red circle"), so scoring them as wrong would only measure the tie
rule. Image->text then ranks the distinct captions (`metrics.grouped_retrieval_recall`), so
copies of one wrong caption count once and its chance level is k / (distinct captions);
text->image still ranks every image. Grouping is by the caption *text*, never by (possibly
truncated) token rows: the text of each row's "text_index" (the source example whose caption
the row holds, which is not the row's own index when the source stood a readable pair in
for an unreadable image), read from the data's `captions`.

Config (`config.evals.<name>`):
  type="retrieval", data (dataset spec for make_data), split, batch_size (rows per embed call),
  every_steps (default 0: only at the end), max_examples (default all), ks (default (1, 5, 10)),
  group_identical_captions (default False).
"""

from typing import Any

import numpy as np

from experiments import evaluators
from experiments.evaluators import metrics

_REQUIRED = ("data", "split", "batch_size")
_OPTIONAL = {
    "every_steps": 0,
    "max_examples": None,
    "ks": (1, 5, 10),
    "group_identical_captions": False,
}


@evaluators.register("retrieval")
class RetrievalEvaluator:
    """Image->text and text->image Recall@k.

    `run` returns {"i2t_r@{k}", "chance_i2t_r@{k}" for k up to the number of captions (of
    distinct captions when grouping), "t2i_r@{k}", "chance_t2i_r@{k}" for k <= N,
    "num_examples"} and, when grouping, "distinct_captions".
    """

    def __init__(self, config: Any, *, make_data: evaluators.MakeData):
        cfg = evaluators.check_config(
            config, type_name="retrieval", required=_REQUIRED, optional=_OPTIONAL
        )
        self.every_steps = cfg["every_steps"]
        self.methods = evaluators.CONTRASTIVE_METHODS
        self.batch_size = int(cfg["batch_size"])
        self.max_examples = cfg["max_examples"]
        self.ks = tuple(int(k) for k in cfg["ks"])
        self._batches_fn, info = make_data(cfg["data"], cfg["split"])
        self.group = bool(cfg["group_identical_captions"])
        self._captions = evaluators.info_field(info, "captions")
        if self.group and self._captions is None:
            raise ValueError("retrieval: group_identical_captions needs the data's caption texts")

    def run(self, predict: evaluators.PredictFns) -> dict:
        """Embeds every valid (image, caption) pair; returns flat float metrics."""
        embed_image, embed_text = predict["embed_image"], predict["embed_text"]
        image_emb, text_emb, text_index = [], [], []
        for chunk, n in evaluators.valid_chunks(
            self._batches_fn,
            ("image", "tokens"),
            batch_size=self.batch_size,
            max_examples=self.max_examples,
            host_keys=("text_index",) if self.group else (),
        ):
            image_emb.append(evaluators.embed_chunk(embed_image, chunk["image"], n))
            text_emb.append(evaluators.embed_chunk(embed_text, chunk["tokens"], n))
            if self.group:
                text_index.append(chunk["text_index"][:n])
        if not image_emb:
            raise ValueError("retrieval: the eval split has no valid (mask=True) examples")
        image_emb, text_emb = np.concatenate(image_emb), np.concatenate(text_emb)
        num = len(image_emb)
        if not self.group:
            out = metrics.retrieval_recall(image_emb, text_emb, np.arange(num), ks=self.ks)
        else:
            groups, distinct = self._caption_groups(np.concatenate(text_index))
            out = metrics.grouped_retrieval_recall(image_emb, text_emb, groups, groups, ks=self.ks)
            out["distinct_captions"] = float(distinct)
        out["num_examples"] = float(num)
        return out

    def _caption_groups(self, text_index: np.ndarray) -> tuple[np.ndarray, int]:
        """[n] int group id of each row's caption text, and the number of distinct texts."""
        texts = evaluators.texts_at(self._captions, text_index, "retrieval")
        ids: dict[str, int] = {}
        groups = np.array([ids.setdefault(t, len(ids)) for t in texts])
        return groups, len(ids)
