"""training/run_spec.py: one pass over the config, every config-only mistake refused before
any data is opened; the learning-rate schedule follows config.total_steps."""

import math

import jax
import pytest

from data import sources
from experiments.training import config_utils, optimizer, run_spec, sharding, trainer


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if anything opens a dataset (the checks must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was opened before the config was checked")

    monkeypatch.setattr(sources, "get_source", refuse)


def _check(config):
    return run_spec.check(config, num_devices=jax.device_count())


def test_a_total_steps_override_sets_the_schedule_length():
    # What the README's SLURM example does: --config.total_steps on a file that sets 500.
    config = config_utils.load_config("experiments/configs/clip/tiny.py", ["total_steps=200"])
    spec = _check(config)
    assert spec.total_steps == 200 and spec.optim["total_steps"] == 200
    schedule = optimizer.make_schedule(spec.optim)
    peak, warmup = config.optim.lr, config.optim.warmup_steps  # 50: the file's 500 // 10
    # Warmup to the peak, then a cosine that is half-way down at the middle of the 150 decay
    # steps and at its end (0) at step 200: not at the file's 500.
    assert float(schedule(warmup)) == pytest.approx(peak)
    assert float(schedule(125)) == pytest.approx(peak / 2, rel=1e-5)
    assert float(schedule(200)) == pytest.approx(0.0, abs=1e-9)
    # A run longer than the file's is still decaying at the file's end (step 500), where a
    # schedule of the file's length would already sit at its final lr (0).
    longer = _check(
        config_utils.load_config("experiments/configs/clip/tiny.py", ["total_steps=900"])
    )
    want = peak * 0.5 * (1 + math.cos(math.pi * (500 - 50) / (900 - 50)))
    assert float(optimizer.make_schedule(longer.optim)(500)) == pytest.approx(want, rel=1e-5)
    short = config_utils.load_config("experiments/configs/clip/tiny.py", ["total_steps=40"])
    with pytest.raises(config_utils.ConfigError, match=r"warmup_steps=50 must lie in \[0, total"):
        _check(short)


def test_a_contradicting_schedule_length_is_refused_before_data(make_config, no_data):
    config = make_config(steps=4)
    config.optim.total_steps = 10
    with pytest.raises(
        config_utils.ConfigError, match=r"optim.total_steps=10 contradicts config.total_steps=4"
    ):
        trainer.setup(config)
    config.optim.total_steps = 4  # the same length, given twice, is no contradiction
    assert _check(config).optim["total_steps"] == 4


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(mesh=(("data", 3),)), sharding.ShardingError, r"needs a multiple of 3 devices"),
        (dict(mesh=(("dat", -1),)), sharding.ShardingError, r"distinct names from"),
        (dict(mesh_dcn=(("slice", 2),)), sharding.ShardingError, r"mesh_dcn axes must be"),
        (dict(batch_size=12), sharding.ShardingError, r"batch_size=12 cannot be split"),
        (dict(parallelism="zero3"), sharding.ShardingError, r"Unknown config.parallelism"),
        (dict(precision="fp8"), config_utils.ConfigError, r"config.precision='fp8' is unknown"),
        (dict(objective="clipp"), config_utils.ConfigError, r"Unknown objective 'clipp'"),
        (dict(microbatches=3), config_utils.ConfigError, r"microbatches=3 does not divide"),
        (dict(total_steps=0), config_utils.ConfigError, r"total_steps must be an integer >= 1"),
        (dict(init=dict(load=("img",))), config_utils.ConfigError, r"init.load names towers"),
        (
            dict(init=dict(checkpoint="w", hf="h", load=("img",))),
            config_utils.ConfigError,
            r"`checkpoint` or `hf`, not both",
        ),  # fmt: skip
        (
            dict(init=dict(chekpoint="w")),
            config_utils.ConfigError,
            r"config.init.chekpoint \(did you mean 'checkpoint'\?\)",
        ),  # fmt: skip
        (
            dict(checkpoint=dict(every_step=3)),
            config_utils.ConfigError,
            r"config.checkpoint.every_step \(did you mean 'every_steps'\?\)",
        ),  # fmt: skip
    ],
)
def test_config_only_mistakes_fail_before_any_data_is_read(
    make_config, no_data, change, error, message
):
    config = make_config()
    for key, value in change.items():
        config[key] = value
    with pytest.raises(error, match=message):
        trainer.setup(config)


def test_nested_typos_fail_before_any_data_is_read(make_config, no_data):
    config = make_config()
    config.data.tokenizer.vocab_sise = 3
    with pytest.raises(config_utils.ConfigError, match=r"config.data.tokenizer.vocab_sise"):
        trainer.setup(config)
    config = make_config()
    config.model.text.widht = 3
    with pytest.raises(config_utils.ConfigError, match=r"config.model.text.widht"):
        trainer.setup(config)
    config = make_config()
    config.optim.shedule = "cosine"
    with pytest.raises(config_utils.ConfigError, match=r"optim.shedule"):
        trainer.setup(config)
    config = make_config()
    config.evals = {"zs": dict(type="zero_shot", data="vlax_shapes", split="test", batch_size=12)}
    with pytest.raises(sharding.ShardingError, match=r"evals.zs.batch_size=12 cannot be split"):
        trainer.setup(config)


def test_the_resolved_config_is_what_the_run_records(make_config):
    spec = _check(make_config(steps=3))
    assert spec.config.optim.total_steps == 3
    assert spec.checkpoint == run_spec.CheckpointSpec(2, 3, False, ())
    assert spec.init is None and spec.mesh_sizes == {"data": 8, "fsdp": 1, "tensor": 1}
