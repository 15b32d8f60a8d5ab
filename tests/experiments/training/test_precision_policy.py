"""The precision policy reaches every tower of every family: each shipped config (and its
architecture variants) builds under bf16_mixed and bf16_act, every tower computes in the
policy's dtypes, and no dict-valued model group escapes the policy."""

import glob

import jax
import jax.numpy as jnp
import pytest

from experiments.training import config_utils, inputs, model_config, precision_policy, run_spec
from models import precision as precision_lib
from objectives.contrastive import TwoTower

CONFIGS = sorted(glob.glob("experiments/configs/*/*.py"))
VARIANTS = [*CONFIGS, "experiments/configs/simvlm/tiny.py:arch=decoder_only"]
FAMILIES = {"clip", "lit", "siglip", "simvlm", "virtex"}


def test_every_config_family_is_checked():
    # Under Bazel a config family missing from the deps would silently drop out of the glob.
    assert {p.split("/")[2] for p in CONFIGS} == FAMILIES


def _build(config_arg: str, precision: str):
    config = config_utils.load_config(config_arg, [f"precision={precision}"])
    spec = run_spec.check(config, num_devices=jax.device_count())
    data = inputs.Inputs(spec.data, global_batch_size=spec.batch_size, seed=0, build_train=False)
    kwargs = model_config.complete(
        spec.objective_cls, spec.model, data.model_fields(), spec.precision
    )
    model = spec.objective_cls(**kwargs)
    batch = data.dummy_batch(2)
    # Shapes only: nothing runs; a tower that refused a dtype would fail here.
    jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, batch), jax.random.key(0))
    return spec, kwargs, model, data


@pytest.mark.parametrize("precision", ["bf16_mixed", "bf16_act"])
@pytest.mark.parametrize("path", VARIANTS)
def test_every_tower_of_every_config_takes_the_policy(path, precision):
    spec, kwargs, model, data = _build(path, precision)
    want = precision_lib.policy_fields(precision)
    groups = {k for k, v in spec.model.items() if isinstance(v, dict)}
    # Every nested group of the model config is a tower the objective declares.
    assert groups <= set(spec.objective_cls.CONFIG_MODULES), groups - set(
        spec.objective_cls.CONFIG_MODULES
    )
    for tower in precision_policy.towers(spec.objective_cls):
        if tower in kwargs:
            assert {k: kwargs[tower][k] for k in want} == want, tower
    # ... and the built model does its matmuls in the policy's matmul dtype only.
    flops = model.train_flops_per_example(data.example_shapes())
    assert set(flops) == {jnp.dtype(want["matmul_dtype"]).name}


def test_fp32_leaves_the_configs_as_written():
    towers = {"image": {"width": 8}, "text": {"width": 8}}
    assert precision_policy.apply(TwoTower, towers, "fp32") == towers


@pytest.mark.parametrize(
    "tower, precision, message",
    [
        ({"matmul_dtype": "bfloat16"}, "fp32", r"image.matmul_dtype='bfloat16' contradicts"),
        ({"dtype": "bfloat16"}, "bf16_mixed", r"\(dtype='float32'\)"),
    ],
)
def test_a_tower_that_names_its_own_dtypes_is_refused(tower, precision, message):
    with pytest.raises(config_utils.ConfigError, match=message):
        precision_policy.apply(TwoTower, {"image": tower, "text": {}}, precision)
