"""experiments/training/config_utils.py: arg parsing, loading by path, key checks, overrides."""

import textwrap

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from experiments.training.config_utils import ConfigError, check_keys, load_config, parse_arg

CONFIG_FILE = textwrap.dedent(
    """
    import ml_collections
    from experiments.training import config_utils

    def get_config(arg=None):
        arg = config_utils.parse_arg(arg, variant="S/16", res=32, scan=False, wd=None)
        config = ml_collections.ConfigDict()
        config.variant = arg.variant
        config.res = arg.res
        config.scan = arg.scan
        config.total_steps = 1000
        config.tags = ("a", "b")
        config.optim = dict(name="adamw", lr=1e-3, grad_clip_norm=None)
        return config
    """
)


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(CONFIG_FILE)
    return str(path)


def test_parse_arg_types_and_bare_keys():
    arg = parse_arg("variant=B/16,res=224,scan,lr=1e-3", variant="S/16", res=32, scan=False, lr=0.1)
    assert arg.to_dict() == dict(variant="B/16", res=224, scan=True, lr=1e-3)
    assert isinstance(arg.res, int) and isinstance(arg.lr, float)
    # Defaults kept; a float default accepts an int literal; None defaults infer the type.
    assert parse_arg(None, res=32).res == 32
    assert parse_arg("lr=1", lr=0.5).lr == 1.0
    inferred = parse_arg("a=3,b=0.5,c=false,d=text", a=None, b=None, c=None, d=None)
    assert inferred.to_dict() == dict(a=3, b=0.5, c=False, d="text")
    # A string default keeps the text verbatim, digits included.
    assert parse_arg("variant=16", variant="S/16").variant == "16"


def test_parse_arg_errors():
    with pytest.raises(ConfigError, match=r"'reso'.*did you mean 'res'.*valid keys: \['res', "):
        parse_arg("reso=224", res=32, variant="S/16")
    with pytest.raises(ConfigError, match="cannot parse as int"):
        parse_arg("res=big", res=32)
    with pytest.raises(ConfigError, match="needs a value"):
        parse_arg("res", res=32)
    with pytest.raises(ConfigError, match="cannot parse as bool"):
        parse_arg("scan=maybe", scan=False)


def test_load_config_with_and_without_arg(config_path):
    config = load_config(config_path)
    assert (config.variant, config.res, config.scan) == ("S/16", 32, False)
    config = load_config(config_path + ":variant=B/16,res=224,scan")
    assert (config.variant, config.res, config.scan) == ("B/16", 224, True)
    assert config.optim.lr == 1e-3


def test_load_config_overrides_like_the_command_line(config_path):
    config = load_config(config_path, ["total_steps=100", "optim.lr=0.5", "tags=('x',)"])
    assert config.total_steps == 100 and config.optim.lr == 0.5 and config.tags == ("x",)


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_load_config_errors(tmp_path, config_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.py"))
    with pytest.raises(ConfigError, match="'resolution'"):
        load_config(config_path + ":resolution=224")
    with pytest.raises(ConfigError, match='Did you mean "total_steps"'):
        load_config(config_path, ["totl_steps=100"])
    with pytest.raises(ConfigError, match="total_steps=many"):
        load_config(config_path, ["total_steps=many"])


def test_check_keys_flat_and_nested(config_path):
    config = load_config(config_path)
    top = {"variant", "res", "scan", "total_steps", "tags", "optim"}
    check_keys(config, top, "config")
    with pytest.raises(ConfigError, match=r"config.total_steps.*did you mean 'total_step'"):
        check_keys(config, top - {"total_steps"} | {"total_step"}, "config")
    schema = {k: None for k in top} | {"optim": {"name", "lr", "grad_clip_norm"}}
    check_keys(config, schema, "config")
    config.unlock()  # the entry points lock configs; check_keys is for dicts built in code
    config.optim.lrr = 0.1
    with pytest.raises(ConfigError, match=r"config.optim.lrr \(did you mean 'lr'\?\)"):
        check_keys(config, schema, "config")
    with pytest.raises(ConfigError, match="config.res must be a group"):
        check_keys(config, {k: None for k in top} | {"res": {"x"}}, "config")
    check_keys({"a": 1}, ["a", "b"], "plain dict")


def _parse_flags(argv):
    """What a launcher does with absl: `--config path.py:arg --config.field=value`."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


# config_flags imports the file with the deprecated importlib load_module().
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_config_flags_overrides_and_unknown_keys(config_path):
    config = _parse_flags(["prog", f"--config={config_path}:res=64", "--config.optim.lr=0.25"])
    assert config.res == 64 and config.optim.lr == 0.25
    # config_flags itself rejects unknown override names, with a suggestion.
    with pytest.raises(AttributeError, match='Did you mean "total_steps"'):
        _parse_flags(["prog", f"--config={config_path}", "--config.totl_steps=5"])
    # ... and its arg goes through parse_arg, so unknown arg keys fail too (absl rewraps).
    with pytest.raises(flags.IllegalFlagValueError, match="Unknown config argument 'reso'"):
        _parse_flags(["prog", f"--config={config_path}:reso=64"])
    assert isinstance(config, ml_collections.ConfigDict)
