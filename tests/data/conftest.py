"""A `gs://` filesystem for tests, kept in memory: epath's gs:// backend, pointed at TF's ram://.

With TensorFlow installed, epath serves gs:// paths through `tf.io.gfile`. The `gcs` fixture
swaps that backend for one that rewrites gs://bucket/... to TensorFlow's in-memory ram://
filesystem, so code under test takes exactly the non-local path it takes on a pod, offline,
and nothing it writes touches the local disk.
"""

import os
import types
import uuid

import pytest
from etils import epath
from etils.epath import backend, gpath

_GS, _RAM = "gs://", "ram://"


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
