"""Paths that may be local or remote (`gs://...` on pods): everything in data/ goes through here.

`etils.epath` gives one pathlib-like API over the local disk and URIs (gs://, s3://, ...).
Only local paths are user-expanded and made absolute: `os.path.abspath` would turn
"gs://bucket/x" into "<cwd>/gs:/bucket/x".
"""

import os

from etils import epath

PathLike = str | os.PathLike


def is_local(path: PathLike) -> bool:
    """True for a local filesystem path, False for a URI such as gs://bucket/dir."""
    return "://" not in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
    """An `epath.Path` for `path`: absolute and `~`-expanded if local, else the URI as is."""
    if is_local(path):
        return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    return epath.Path(path)
