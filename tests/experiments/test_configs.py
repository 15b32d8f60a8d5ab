"""Every shipped config loads, passes the trainer's validation, and its sweep names real keys."""

import copy
import glob
import importlib.util
import os

import pytest

from experiments import config_utils, inputs, trainer

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
    trainer.validate_config(config)
    assert config.optim.total_steps == config.total_steps
    assert config.batch_size > 0


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.endswith("b16.py")])
def test_paper_scale_configs_have_a_cpu_mode(path):
    config = config_utils.load_config(path + ":runlocal")
    trainer.validate_config(config)
    assert config.batch_size <= 16 and config.data.name == "vlax_shapes"
    assert config_utils.load_config(path).batch_size == 32768


def _module(path):
    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SWEEPS = [p for p in CONFIGS if hasattr(_module(p), "get_sweep")]


def test_demo_configs_define_sweeps():
    assert {"experiments/configs/clip/tiny.py", "experiments/configs/siglip/tiny.py"} <= set(SWEEPS)


@pytest.mark.parametrize("path", SWEEPS)
def test_sweeps_override_existing_fields(path):
    module = _module(path)
    sweep = module.get_sweep()
    assert len(sweep) >= 2
    for point in sweep:
        config = copy.deepcopy(module.get_config())
        config_utils.apply_overrides(config, [f"{k}={v}" for k, v in point.items()])
        for key, value in point.items():
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == value


def test_arg_typo_is_rejected():
    with pytest.raises(config_utils.ConfigError, match="stesp"):
        config_utils.load_config("experiments/configs/clip/tiny.py:stesp=3")


def test_data_config_takes_num_threads_and_rejects_typos():
    config = config_utils.load_config("experiments/configs/clip/tiny.py").data
    config.num_threads = 1
    assert inputs.Inputs(config, global_batch_size=8, seed=0, build_train=False).num_threads == 1
    config.num_thread = 3
    with pytest.raises(config_utils.ConfigError, match="did you mean 'num_threads'"):
        inputs.Inputs(config, global_batch_size=8, seed=0, build_train=False)
