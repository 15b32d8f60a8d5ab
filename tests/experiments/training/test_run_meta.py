"""Run metadata: format versions and migrations, model and config checks on resume."""

import jax.numpy as jnp
import ml_collections
import pytest

from experiments.training import run_meta


def _params(width):
    return {"img": {"kernel": jnp.zeros((3, width))}, "log_temp": jnp.zeros(())}


def _config(**changes):
    config = ml_collections.ConfigDict(
        dict(
            objective="contrastive",
            seed=0,
            batch_size=16,
            total_steps=100,
            model=dict(image=dict(width=32), loss="softmax"),
            data=dict(name="vlax_shapes", max_len=16, prefetch=2),
            optim=dict(name="adamw", lr=1e-3, freeze=()),
            evals=dict(zero_shot=dict(every_steps=0)),
            log_every_steps=50,
        )
    )
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def _meta(config=None, width=4, sha="abc"):
    return run_meta.make_meta(
        config or _config(),
        model_config={"image": {"width": 32}},
        params=_params(width),
        tokenizer={"path": "/t.model", "sha256": sha},
        data={"image_size": 32},
    )


def test_signature_lists_every_leaf():
    sig = run_meta.param_signature(_params(4))
    assert sig == {"img/kernel": [[3, 4], "float32"], "log_temp": [[], "float32"]}


def test_meta_is_json_and_describes_the_run():
    meta = _meta()
    assert meta["format_version"] == run_meta.FORMAT_VERSION
    assert meta["config"]["model"]["image"]["width"] == 32
    assert meta["tokenizer"]["sha256"] == "abc" and meta["data"] == {"image_size": 32}
    assert meta["config"]["optim"]["freeze"] == []  # tuples become JSON lists


def test_version_1_metadata_is_upgraded():
    v1 = {"format_version": 1, "objective": "contrastive", "params": {}}
    meta = run_meta.upgrade_meta(v1, "ckpt")
    assert meta["format_version"] == run_meta.FORMAT_VERSION and meta["config"] is None


def test_newer_or_unmigratable_versions_say_what_to_do(monkeypatch):
    with pytest.raises(run_meta.CheckpointMismatchError, match="version 99 was written by a newer"):
        run_meta.upgrade_meta({"format_version": 99}, "ckpt")
    monkeypatch.setattr(run_meta, "MIGRATIONS", {})
    with pytest.raises(run_meta.CheckpointMismatchError, match="version 1 has no migration to 2"):
        run_meta.upgrade_meta({"format_version": 1}, "ckpt")
    with pytest.raises(run_meta.CheckpointMismatchError, match="not written by vlax"):
        run_meta.upgrade_meta({}, "ckpt")


@pytest.mark.parametrize(
    "saved, message",
    [
        (_meta(width=8), r"img/kernel: checkpoint \[\[3, 8\]"),
        ({**_meta(), "objective": "prefix_lm"}, "objective 'prefix_lm'"),
        ({**_meta(), "params": {"img/kernel": [[3, 4], "float32"]}}, "1 parameters not in"),
    ],
)
def test_another_model_is_refused_with_the_difference(saved, message):
    with pytest.raises(run_meta.CheckpointMismatchError, match=message):
        run_meta.check_resume(saved, _meta(), "--workdir /x")


@pytest.mark.parametrize(
    "field, value",
    [
        ("batch_size", 32),
        ("seed", 1),
        ("data.max_len", 32),
        ("data.name", "user:/pairs.csv"),
        ("model.loss", "sigmoid"),
        ("optim.freeze", ("img/.*",)),
    ],
)
def test_meaningful_config_changes_refuse_a_resume(field, value):
    with pytest.raises(run_meta.ResumeConfigError, match=rf"{field}: checkpoint .* -> now"):
        run_meta.check_resume(_meta(), _meta(_config(**{field: value})), "--workdir /x")


def test_harmless_changes_are_allowed_and_reported():
    current = _meta(
        _config(
            **{
                "total_steps": 200,
                "evals.zero_shot.every_steps": 10,
                "data.prefetch": 4,
                "optim.lr": 3e-4,
            }
        )
    )
    changes = run_meta.check_resume(_meta(), current, "--workdir /x")
    assert changes == {
        "total_steps": (100, 200),
        "evals.zero_shot.every_steps": (0, 10),
        "data.prefetch": (2, 4),
        "optim.lr": (1e-3, 3e-4),
    }


def test_allowed_changes_and_tokenizer_identity():
    moved = _meta(_config(**{"data.name": "vlax_shapes_v2"}))
    assert "data.name" in run_meta.check_resume(_meta(), moved, "w", allow=("data.name",))
    with pytest.raises(run_meta.ResumeConfigError, match="tokenizer"):
        run_meta.check_resume(_meta(), _meta(sha="other"), "w")


def test_old_checkpoints_resume_without_config_checks():
    v1 = run_meta.upgrade_meta(
        {"format_version": 1, "objective": "contrastive", "params": _meta()["params"]}, "c"
    )
    assert run_meta.check_resume(v1, _meta(_config(batch_size=64)), "w") == {}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    from etils import epath

    path = epath.Path(tmp_path) / "results.json"
    run_meta.write_json_atomic(path, {"a": 1})

    real_write = type(path).write_text

    def fail_halfway(self, text):  # a crash after half the bytes reached the file
        real_write(self, text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(type(path), "write_text", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        run_meta.write_json_atomic(path, {"a": 2})
    monkeypatch.undo()
    assert path.read_text().replace(" ", "").replace("\n", "") == '{"a":1}'
