"""config.init.hf with the real all-MiniLM-L6-v2: the trainer loads the locked text tower."""

import jax
import numpy as np

from data import sources
from experiments.interop import hf_bert, hf_import
from experiments.training import trainer
from tests.experiments.conftest import TINY_SOURCE, tiny_config


def test_a_run_starts_from_the_real_minilm(tmp_path):
    sources.get_source("vlax_shapes", "train", data_dir=str(tmp_path), **TINY_SOURCE)
    config = tiny_config(str(tmp_path), mesh=(("data", 2), ("fsdp", 4)))
    minilm = str(hf_bert.minilm_dir())
    # LiT proper: the whole text tower locked, its 384-d mean-pooled embedding the target.
    config.model.text = hf_import.tower_configs(minilm)["text"]  # its 512 positions
    config.model.image.num_classes = 384
    config.data.max_len = 16
    config.data.tokenizer.model = str(hf_bert.minilm_dir() / "tokenizer.json")
    config.init = dict(hf=minilm, load=("txt",))
    config.optim.freeze = ("txt/.*",)
    s = trainer.setup(config)
    params = jax.device_get(s.fresh_state()["params"])
    want = hf_import.load_params(minilm)["txt"]
    for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(params["txt"]), strict=True):
        np.testing.assert_array_equal(x, y)
    emb = s.model.apply(
        {"params": params}, s.inputs.tokenizer.encode(["a shoe"], 16), method="embed_text"
    )
    assert emb.shape == (1, 384)
