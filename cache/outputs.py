"""Folders a command writes for the user (`--out`): checked before anything is computed, so that a
folder of the user's is never written over and a mistaken path costs one line, not a run."""

from __future__ import annotations

from pathlib import Path

from .errors import PipelineError


def check_out_folder(out: Path, marker: str | None = None, kind: str = "") -> bool:
    """One line unless `out` may take a new output: absent, an empty folder, or, where the command names its
    `marker` file, an earlier output of the same command (`kind` says what, e.g. "a rehearsal folder"), which
    the caller then replaces. Returns whether `out` is such an earlier output."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if marker is not None and (out / marker).is_file():
        return True
    which = f" and is not {kind}" if marker is not None else ""
    raise PipelineError(
        f"--out {out} already exists{which}: remove it or give another --out (nothing else is ever written over)"
    )
