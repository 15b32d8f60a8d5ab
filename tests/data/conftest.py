"""Fixtures of the data tests: a `gs://` filesystem kept in memory, and another process.

With TensorFlow installed, epath serves gs:// paths through `tf.io.gfile`. The `gcs` fixture
swaps that backend for one that rewrites gs://bucket/... to TensorFlow's in-memory ram://
filesystem, so code under test takes exactly the non-local path it takes on a pod, offline,
and nothing it writes touches the local disk.

`other_process` runs a snippet in a fresh interpreter with another PYTHONHASHSEED: data that
every host generates for itself (datasets, tokenizers, input streams) must come out the same
there, which a second call in the same process cannot show. `batches_in_other_process` hands
back the batches such a snippet leaves in `batches`.
"""

import os
import pathlib
import subprocess
import sys
import types
import uuid

import numpy as np
import pytest
from etils import epath
from etils.epath import backend, gpath

_GS, _RAM = "gs://", "ram://"
_REPO = pathlib.Path(__file__).resolve().parents[2]


def _to_ram(value):
    return _RAM + value[len(_GS) :] if isinstance(value, str) and value.startswith(_GS) else value


def _to_gs(value):
    """Maps ram:// paths in gfile results (glob lists, walk tuples) back to gs://."""
    if isinstance(value, str):
        return _GS + value[len(_RAM) :] if value.startswith(_RAM) else value
    if isinstance(value, list | tuple):
        return type(value)(_to_gs(v) for v in value)
    if isinstance(value, types.GeneratorType):
        return (_to_gs(v) for v in value)
    return value


class _RamGfile:
    """`tf.io.gfile` with gs:// arguments redirected to ram://."""

    def __init__(self, gfile):
        self._gfile = gfile

    def __getattr__(self, name):
        fn = getattr(self._gfile, name)

        def call(*args, **kwargs):
            args = [_to_ram(a) for a in args]
            kwargs = {k: _to_ram(v) for k, v in kwargs.items()}
            return _to_gs(fn(*args, **kwargs))

        return call


class _RamBackend(backend._TfBackend):
    @property
    def gfile(self):
        return _RamGfile(self.tf.io.gfile)


@pytest.fixture
def gcs(monkeypatch) -> epath.Path:
    """A fresh, empty gs://vlax-test/<id> folder that lives in TF's ram:// filesystem."""
    import tensorflow as tf

    monkeypatch.setattr(backend, "tf_backend", _RamBackend())
    # epath asks Google Cloud whether a bucket is zonal; there is no network here.
    monkeypatch.setattr(gpath, "_is_zonal_gcs_bucket", lambda bucket: False)
    name = f"vlax-test/{uuid.uuid4().hex}"
    root = epath.Path(_GS + name)
    root.mkdir(parents=True)
    (root / "probe").write_text("x")
    # The non-local backend really served it: TF's ram:// has it, the local disk does not.
    assert tf.io.gfile.exists(f"{_RAM}{name}/probe")
    assert not os.path.exists(f"/gs/{name}") and not os.path.exists(f"gs:/{name}")
    (root / "probe").unlink()
    yield root
    tf.io.gfile.rmtree(_RAM + name)


@pytest.fixture
def other_process():
    """`run(code) -> stdout`: runs Python `code` from the repo root in a new interpreter whose
    PYTHONHASHSEED differs from this one's; a failing snippet fails the test with its stderr."""
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(_REPO))

    def run(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=_REPO, env=env, capture_output=True, text=True
        )
        if done.returncode:
            raise AssertionError(f"the other process failed:\n{done.stderr}")
        return done.stdout

    return run


def save_batches(batches: list[dict], path: str) -> None:
    """Writes batches (dicts of arrays) to an .npz file as "<step>.<key>" arrays."""
    np.savez(path, **{f"{s}.{k}": v for s, b in enumerate(batches) for k, v in b.items()})


def load_batches(path) -> list[dict]:
    """The batches `save_batches` wrote, in order."""
    with np.load(path) as saved:
        steps = sorted({int(name.split(".")[0]) for name in saved.files})
        return [
            {k.split(".", 1)[1]: saved[k] for k in saved.files if k.split(".")[0] == str(s)}
            for s in steps
        ]


@pytest.fixture
def batches_in_other_process(other_process, tmp_path):
    """`run(code) -> list[dict]`: runs `code` with `other_process`; it must leave a list of
    batches in `batches`, which come back through an .npz file."""
    path = str(tmp_path / "other_process_batches.npz")

    def run(code: str) -> list[dict]:
        other_process(
            f"{code}\nfrom tests.data.conftest import save_batches\nsave_batches(batches, {path!r})"
        )
        return load_batches(path)

    return run
