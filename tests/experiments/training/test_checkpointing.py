"""Checkpoint files: metadata reads, partial sharded loads, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.training import checkpointing, run_meta, sharding


def _save(workdir, step=3, meta=None):
    state = {
        "step": jnp.asarray(step),
        "params": {"img": {"kernel": jnp.arange(32.0).reshape(8, 4)}, "txt": {"b": jnp.ones(8)}},
        "opt_state": {"mu": jnp.full((8, 4), 2.0)},
    }
    ckpt = checkpointing.Checkpointer(str(workdir), save_every=1, keep=2, async_save=False)
    ckpt.save(step, state, "{}", meta or {"format_version": run_meta.FORMAT_VERSION})
    ckpt.close()
    return state


def test_read_meta_upgrades_old_formats(tmp_path):
    _save(tmp_path, meta={"format_version": 1, "objective": "contrastive", "params": {}})
    meta, step = checkpointing.read_meta(str(tmp_path))
    assert step == 3 and meta["format_version"] == run_meta.FORMAT_VERSION
    assert meta["config"] is None


def test_subtree_load_reads_only_that_tower_into_its_sharding(tmp_path):
    state = _save(tmp_path)
    mesh = sharding.make_mesh((("fsdp", 8),))
    target = NamedSharding(mesh, P("fsdp", None))
    abstract = {"kernel": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=target)}
    loaded, step = checkpointing.load_param_subtrees(str(tmp_path), None, {"img": abstract})
    assert step == 3 and set(loaded) == {"img"}
    kernel = loaded["img"]["kernel"]
    assert kernel.sharding == target and len(kernel.addressable_shards) == 8
    np.testing.assert_array_equal(kernel, state["params"]["img"]["kernel"])


def test_signature_and_params_from_a_workdir(tmp_path):
    _save(tmp_path)
    sig, _ = checkpointing.saved_param_signature(str(tmp_path))
    assert sig == {"img/kernel": [[8, 4], "float32"], "txt/b": [[8], "float32"]}
    params, step = checkpointing.load_params(str(tmp_path / "checkpoints"))
    assert step == 3 and isinstance(params["txt"]["b"], np.ndarray)


def test_missing_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
        checkpointing.load_params(str(tmp_path / "nowhere"))
    assert checkpointing.latest_step(str(tmp_path)) is None
    _save(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"No checkpoint step 7 .* available: \[3\]"):
        checkpointing.read_meta(str(tmp_path), 7)
