"""Binds `config.data` to the data package: tokenizer, training stream, eval batches.

config.data = dict(
    name="vlax_shapes",        # built-in, any prepared tfds name, or "user:/path/pairs.csv"
    train_split="train",
    data_dir="data_cache",     # tfds data_dir (the built-in is generated here if missing)
    image_size=64, max_len=16, augment=True, prefetch=2,
    num_threads=0,             # input threads; 0: min(16, CPU count)
    # model None: <data_dir>/tokenizers/<name>_sp<V>_v2.model, trained on the train captions
    # once; a .json path is a Hugging Face tokenizer.json. canonicalize/lowercase: SigLIP's
    # text canonicalisation (punctuation removed, optionally lowercased).
    tokenizer=dict(model=None, vocab_size=256, canonicalize=False, lowercase=False),
    source=dict(train_size=20000, test_size=2000),  # extra kwargs for data.sources.get_source
    task="caption",            # data.tasks: caption | prefix_lm | vqa | text_only
    task_args={},              # the task's options, e.g. {"split": 0}
    mix=(),                    # ((spec, weight[, task[, task_args]]), ...): train on a mix of
                               # sources instead of `name` (which still names the tokenizer)
)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from data import mixing, pipeline, sources, tasks
from data import tokenizer as tokenizer_lib
from experiments.training import config_utils

DATA_KEYS = {
    "name",
    "train_split",
    "data_dir",
    "image_size",
    "max_len",
    "augment",
    "prefetch",
    "tokenizer",
    "source",
    "mean",
    "std",
    "num_threads",
    "task",
    "task_args",
    "mix",
}
TOKENIZER_KEYS = {"model", "vocab_size", "canonicalize", "lowercase"}
MAX_TOKENIZER_CORPUS = 200_000
# Captions sampled (text only, no image decode) for the truncation warning.
CAPTION_STATS_SAMPLE = 10_000
EVAL_READ_BATCH = 256

iterator_state_to_json = pipeline.iterator_state_to_json
iterator_state_from_json = pipeline.iterator_state_from_json


def check_data_config(config) -> None:
    """Unknown keys of `config.data` and `config.data.tokenizer` (nothing is read)."""
    config_utils.check_keys(config, DATA_KEYS, "config.data")
    config_utils.check_keys(config.get("tokenizer") or {}, TOKENIZER_KEYS, "config.data.tokenizer")


class Inputs:
    """The input side of one experiment (train stream, eval data, tokenizer)."""

    def __init__(
        self,
        config,
        *,
        global_batch_size: int,
        seed: int,
        build_train: bool = True,
        inherited_tokenizer: Mapping[str, Any] | None = None,
    ):
        """`inherited_tokenizer`: the recorded tokenizer of a checkpoint this run starts from
        (config.init), used when config.data.tokenizer.model is empty: a fine-tune must read
        the ids its weights were trained on."""
        self.inherited_tokenizer = inherited_tokenizer
        check_data_config(config)
        self.config = config
        self.name = config.name
        data_dir = config.get("data_dir", "data_cache")
        self.data_dir = (
            data_dir if "://" in data_dir else os.path.abspath(os.path.expanduser(data_dir))
        )
        self.image_size = int(config.image_size)
        self.max_len = int(config.max_len)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.source_kwargs = config_utils.plain(config.get("source") or {})
        self.norm = dict(mean=config.get("mean", 0.5), std=config.get("std", 0.5))
        self.num_threads = int(config.get("num_threads") or min(16, os.cpu_count() or 2))
        self.task_name = config.get("task") or "caption"
        self.task_args = config_utils.plain(config.get("task_args") or {})
        self.mix = [_mix_entry(m, self.task_name, self.task_args) for m in config.get("mix") or ()]
        split = config.get("train_split", "train")
        # Resolving the train sources first makes a missing dataset fail before anything else.
        self.train_source = self.source(split) if build_train else None
        self.mix_sources = [self.source(split, m[0]) for m in self.mix] if build_train else []
        if build_train:
            _ = self.tokenizer  # load or train it now: failures surface before compiling
            self._check_tasks()
            self._warn_truncation()

    @functools.cached_property
    def task(self) -> tasks.Task:
        """The configured task (unknown names and options fail here, before compiling)."""
        return tasks.get_task(self.task_name, self.tokenizer, self.max_len, self.task_args)

    def _train_components(self) -> list[tuple[str, Any, str, dict]]:
        """(spec, source, task, task_args) of every training source."""
        if not self.mix:
            return [(self.name, self.train_source, self.task_name, self.task_args)]
        return [(m[0], src, m[2], m[3]) for m, src in zip(self.mix, self.mix_sources, strict=True)]

    def _check_tasks(self) -> None:
        for spec, src, name, args in self._train_components():
            task = tasks.get_task(name, self.tokenizer, self.max_len, args)
            task.check_fields(pipeline.source_fields(src), where=f"config.data source {spec!r}")

    @functools.cached_property
    def tokenizer(self) -> tokenizer_lib.Tokenizer:
        return self._tokenizer(self.config.get("tokenizer") or {})

    def source(self, split: str, spec: str | None = None):
        spec = spec or self.name
        # `config.data.source` (the built-in's sizes, a user folder's `strict`) describes the
        # training dataset; evaluating on a slice of it uses the same options.
        kwargs = self.source_kwargs if spec == self.name else {}
        return sources.get_source(spec, split, data_dir=self.data_dir, **kwargs)

    def _tokenizer(self, cfg) -> tokenizer_lib.Tokenizer:
        vocab_size = int(cfg.get("vocab_size", 1000))
        flags = dict(
            canonicalize=bool(cfg.get("canonicalize")), lowercase=bool(cfg.get("lowercase"))
        )
        path = cfg.get("model")
        if not path and self.inherited_tokenizer:
            tok = self.inherited_tokenizer
            logging.info("Tokenizer of the init checkpoint: %s", tok["path"])
            flags = dict(
                canonicalize=bool(tok.get("canonicalize")), lowercase=bool(tok.get("lowercase"))
            )
            return tokenizer_lib.get_tokenizer(tok["path"], None, **flags)
        if not path:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
            # v2: the special-id layout (bos 2, eos 3); c/l: canonical / lowercased text.
            tag = "_v2" + "_c" * flags["canonicalize"] + "l" * flags["lowercase"]
            # Another task's text (questions, answers) or a mix trains another vocabulary.
            fields = {
                f
                for m in self.mix or [(self.name, 1, self.task_name)]
                for f in tasks.task_class(m[2]).text_fields
            }
            specs = sorted({m[0] for m in self.mix} - {self.name})
            tag += "".join(f"_{f}" for f in sorted(fields - {"caption"}))
            tag += "".join("_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", x) for x in specs)
            path = str(
                epath.Path(self.data_dir) / "tokenizers" / f"{slug}_sp{vocab_size}{tag}.model"
            )
        split = self.config.get("train_split", "train")

        def corpus():
            out = []
            entries = self.mix or [(self.name, 1.0, self.task_name, self.task_args)]
            for spec, _, task_name, _ in entries:
                src = self.train_source if spec == self.name and self.train_source else None
                src = src or self.source(split, spec)
                # A sample is enough for a subword vocabulary; reading a web-scale split is not.
                for field in tasks.task_class(task_name).text_fields:
                    out += _flat(sources.read_texts(src, field, MAX_TOKENIZER_CORPUS))
            return out

        return tokenizer_lib.get_tokenizer(path, corpus, vocab_size, **flags)

    def _warn_truncation(self) -> None:
        """Warns when training texts are longer than max_len (they would be cut silently)."""
        texts = []
        for _, src, name, _ in self._train_components():
            fields = tasks.task_class(name).text_fields
            columns = [_flat(sources.read_texts(src, f, CAPTION_STATS_SAMPLE)) for f in fields]
            # A task's text fields share one sequence (vqa: question + answer).
            texts += [" ".join(parts) for parts in zip(*columns, strict=True)]
        stats = tokenizer_lib.truncation_stats(self.tokenizer, texts, self.max_len)
        if stats["num_truncated"]:
            logging.warning(
                "%d of %d sampled training texts (%.0f%%) are longer than "
                "config.data.max_len=%d tokens and will be cut; max_len=%d would fit 95%% of them.",
                stats["num_truncated"],
                stats["num_texts"],
                100 * stats["num_truncated"] / stats["num_texts"],
                self.max_len,
                stats["max_len_for_95pct"],
            )

    def tokenizer_identity(self) -> dict[str, Any] | None:
        """What the checkpoint metadata records of the tokenizer (None without data)."""
        if self.train_source is None:
            return None
        tok = self.tokenizer
        digest = hashlib.sha256(epath.Path(tok.model_path).read_bytes()).hexdigest()
        return {
            "path": str(tok.model_path),
            "sha256": digest,
            "vocab_size": tok.vocab_size,
            "pad_id": tok.pad_id,
            "eos_id": tok.eos_id,
            "bos_id": tok.bos_id,
            "canonicalize": bool(getattr(tok, "canonicalize", False)),
            "lowercase": bool(getattr(tok, "lowercase", False)),
        }

    def model_fields(self) -> dict[str, Any]:
        """What a model config takes from the data: vocab_size, the special ids, max_len,
        image_size and the tokenizer's path (for messages).

        Shapes-only use (the benchmark: no data is read, no tokenizer trained) gets the
        configured tokenizer size `data.tokenizer.vocab_size`, the size training would ask
        sentencepiece for; None when the config names a tokenizer file (its size is the
        file's, so the model config must state it)."""
        if self.train_source is None:
            tok_cfg = self.config.get("tokenizer") or {}
            vocab_size = None if tok_cfg.get("model") else int(tok_cfg.get("vocab_size", 1000))
            ids = (tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID, tokenizer_lib.BOS_ID)
            path = None
        else:
            tok = self.tokenizer
            vocab_size, path = tok.vocab_size, tok.model_path
            ids = (tok.pad_id, tok.eos_id, tok.bos_id)
        return {
            **dict(zip(("pad_id", "eos_id", "bos_id"), ids, strict=True)),
            "vocab_size": vocab_size,
            "tokenizer_path": path,
            "max_len": self.max_len,
            "image_size": self.image_size,
        }

    def description(self) -> dict[str, Any]:
        """The input shapes and normalisation a model trained on this data expects."""
        return {
            "name": self.name,
            "image_size": self.image_size,
            "max_len": self.max_len,
            **self.norm,
        }

    def example_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"image": (self.image_size, self.image_size, 3), "tokens": (self.max_len,)}

    def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zeros shaped like a batch (for init; shapes only matter, not the batch size)."""
        batch = {
            "image": np.zeros((batch_size, *self.example_shapes()["image"]), np.float32),
            "tokens": np.ones((batch_size, self.max_len), np.int32),
        }
        keys = tasks.task_class(self.task_name).train_keys
        if "prefix_len" in keys:
            batch["prefix_len"] = np.ones((batch_size,), np.int32)
        if "has_image" in keys:
            batch["has_image"] = np.ones((batch_size,), bool)
        return batch

    def train_iterator(self):
        common = dict(
            tokenizer=self.tokenizer,
            global_batch_size=self.global_batch_size,
            image_size=self.image_size,
            max_len=self.max_len,
            seed=self.seed,
            augment=bool(self.config.get("augment", True)),
            prefetch=int(self.config.get("prefetch", 2)),
            num_threads=self.num_threads,
            **self.norm,
        )
        if self.mix:
            components = [
                mixing.Component(src, m[1], m[2], m[3], name=m[0])
                for m, src in zip(self.mix, self.mix_sources, strict=True)
            ]
            return mixing.make_mixed_train_iterator(components, **common)
        return pipeline.make_train_iterator(
            self.train_source, task=self.task_name, task_args=self.task_args, **common
        )

    def make_eval_data(
        self,
        spec: str,
        split: str,
        batch_size: int | None = None,
        *,
        extra_texts: Sequence[str] = (),
        task: str | None = None,
        task_args: Mapping[str, Any] | None = None,
    ):
        """The evaluator data contract: (batches_fn, info); see experiments.evaluators.

        `extra_texts` names further text fields to tokenise into `<field>_tokens`; `task`
        (default "caption": the caption tokens) gives batches in that task's eval layout
        (e.g. prompts for generation), with the run's `task_args` when it is the training
        task. Rows carry "text_index", the source index whose texts they hold.
        """
        src = self.source(split, spec)
        task = task or "caption"
        if task_args is None and task == self.task_name:
            task_args = self.task_args
        tasks.get_task(task, self.tokenizer, self.max_len, task_args).check_fields(
            pipeline.source_fields(src), where=f"{spec}:{split}"
        )
        # Read batches only bound host memory (evaluators re-batch for the devices).
        bs = batch_size or EVAL_READ_BATCH

        def batches_fn(indices: Sequence[int] | None = None):
            return pipeline.make_eval_batches(
                src,
                tokenizer=self.tokenizer,
                batch_size=bs,
                image_size=self.image_size,
                max_len=self.max_len,
                num_threads=self.num_threads,
                extra_texts=tuple(extra_texts),
                task=task,
                task_args=task_args,
                indices=indices,
                **self.norm,
            )

        # Multi-host evaluation reads each host's rows only (evaluators.valid_chunks).
        batches_fn.num_examples = len(src)
        info = dict(sources.dataset_info(spec, data_dir=self.data_dir))
        # What the examples hold, so evaluators can check what they need before training.
        info["fields"] = sorted(pipeline.source_fields(src))
        info["captions"] = lambda limit=None: sources.read_texts(src, "caption", limit)
        info["texts"] = lambda field, limit=None: sources.read_texts(src, field, limit)
        info["decode_tokens"] = self.tokenizer.decode
        info["max_len"] = self.max_len
        info.setdefault("templates", info.get("prompt_templates"))
        info["encode_texts"] = lambda texts: self.tokenizer.encode(list(texts), self.max_len)
        return batches_fn, info


def _mix_entry(entry, task: str, task_args: dict) -> tuple[str, float, str, dict]:
    """(spec, weight[, task[, task_args]]) with the run's task as the default."""
    entry = tuple(entry)
    if not 2 <= len(entry) <= 4:
        raise config_utils.ConfigError(
            f"config.data.mix entries are (spec, weight[, task[, task_args]]), got {entry!r}"
        )
    spec, weight = str(entry[0]), float(entry[1])
    name = str(entry[2]) if len(entry) > 2 else task
    args = config_utils.plain(entry[3]) if len(entry) > 3 else (task_args if name == task else {})
    return spec, weight, name, args


def _flat(texts: Sequence) -> list[str]:
    """Reference lists (several captions per image) flattened into one list of strings."""
    out = []
    for t in texts:
        out += [str(x) for x in t] if isinstance(t, list | tuple) else [str(t)]
    return out


def recorded_tokenizer(meta: Mapping[str, Any]) -> tokenizer_lib.Tokenizer:
    """The tokenizer a checkpoint was trained with (from its metadata), never a new one."""
    tok = meta.get("tokenizer")
    if not tok:
        raise FileNotFoundError("the checkpoint records no tokenizer (a run without text data?)")
    flags = {k: bool(tok.get(k)) for k in ("canonicalize", "lowercase") if tok.get(k)}
    tokenizer = tokenizer_lib.get_tokenizer(tok["path"], None, **flags)
    digest = hashlib.sha256(epath.Path(tok["path"]).read_bytes()).hexdigest()
    if tok.get("sha256") and digest != tok["sha256"]:
        raise ValueError(f"{tok['path']} changed since the run was trained (sha256 differs)")
    return tokenizer
