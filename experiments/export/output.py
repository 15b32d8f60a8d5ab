"""An export's output directory: refused when it holds files (unless overwriting), written
in a staging sibling and renamed into place, so a failed export never leaves a half-written
directory behind (and an overwrite keeps the old one until the new one is complete)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

from etils import epath

from experiments.interop.mapping import InteropError


class ExportError(InteropError):
    """The export cannot be done as asked; the message says what to do instead."""


def check_out(out: epath.Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} already holds files; pass --overwrite to replace them")


@contextlib.contextmanager
def staged(out: epath.Path, overwrite: bool) -> Iterator[epath.Path]:
    """Yields an empty staging directory that becomes `out` when the block succeeds."""
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    stage.rename(out)
    if old.exists():
        shutil.rmtree(old)
