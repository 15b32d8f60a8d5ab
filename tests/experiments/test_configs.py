"""Every shipped config loads, passes the trainer's validation, and its sweep names real keys."""

import glob
import importlib.util
import json
import os

import jax
import pytest

from experiments.sweeps import plan as sweep_plan
from experiments.training import config_utils, inputs, run_meta, run_spec, trainer

CONFIGS = sorted(
    p for p in glob.glob("experiments/configs/*/*.py") if not p.endswith("__init__.py")
)


def test_configs_exist():
    names = {os.path.relpath(p, "experiments/configs") for p in CONFIGS}
    assert {
        "clip/tiny.py",
        "siglip/tiny.py",
        "clip/b16.py",
        "siglip/b16.py",
        "lit/tiny.py",
    } <= names


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_validates(path):
    config = config_utils.load_config(path)
    spec = run_spec.check(config, num_devices=jax.device_count())
    # The schedule spans the run: the file leaves optim.total_steps to the trainer.
    assert "total_steps" not in config.optim
    assert spec.optim["total_steps"] == config.total_steps > 0
    assert config.batch_size > 0


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.endswith("b16.py")])
def test_paper_scale_configs_have_a_cpu_mode(path):
    config = config_utils.load_config(path + ":runlocal")
    run_spec.check(config, num_devices=jax.device_count())
    assert config.batch_size <= 16 and config.data.name == "vlax_shapes"
    full = config_utils.load_config(path)
    assert full.batch_size == 32768
    # The CPU mode keeps the model's structure (pooling, norms, loss), only its sizes shrink.
    for tower in ("image", "text"):
        for key in ("pool_type", "activation"):
            assert config.model[tower][key] == full.model[tower][key]
    assert config.model.loss == full.model.loss


def _module(path):
    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SWEEPS = [p for p in CONFIGS if hasattr(_module(p), "get_sweep")]


def test_demo_configs_define_sweeps():
    assert {"experiments/configs/clip/tiny.py", "experiments/configs/siglip/tiny.py"} <= set(SWEEPS)


@pytest.mark.parametrize("path", SWEEPS)
def test_sweep_points_are_distinct_valid_models(path):
    """Each point's command line loads through the entry points' --config machinery
    (unknown fields fail), differs from every other point, and builds a valid model (a bad
    value such as model.loss="sigmod" fails here, not on a cluster)."""
    plan = sweep_plan.load_plan(path)
    assert len(plan.points) >= 2
    seen = set()
    for point in plan.points:
        fields = [f.removeprefix("--config.") for f in point.flags]
        config = config_utils.load_config(point.config_arg, fields)
        # The trainer's own checks and model build, shapes only (no data read, nothing
        # compiled): the objective completes its config from the data's planned shapes.
        s = trainer.setup(config, need_data=False)
        assert jax.tree.leaves(s.states.abstract)
        seen.add(json.dumps(run_meta.to_jsonable(config), sort_keys=True))
    assert len(seen) == len(plan.points)


def test_arg_typo_is_rejected():
    with pytest.raises(config_utils.ConfigError, match="stesp"):
        config_utils.load_config("experiments/configs/clip/tiny.py:stesp=3")


def test_data_config_takes_num_threads_and_rejects_typos():
    path = "experiments/configs/clip/tiny.py"
    config = config_utils.load_config(path, ["data.num_threads=1"]).data
    assert inputs.Inputs(config, global_batch_size=8, seed=0, build_train=False).num_threads == 1
    with pytest.raises(config_utils.ConfigError, match='Did you mean "num_threads"'):
        config_utils.load_config(path, ["data.num_thread=3"])
    unlocked = config.to_dict() | {"num_thread": 3}
    with pytest.raises(config_utils.ConfigError, match="did you mean 'num_threads'"):
        inputs.Inputs(unlocked, global_batch_size=8, seed=0, build_train=False)
