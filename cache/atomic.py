"""One way to write a finished file: to a temporary name beside it, then an atomic rename.

A reader therefore sees the old file or the new one, never half of one; a crash or a full disk leaves
the target as it was. (Feature files are written the same way, through a resumable `.partial`.)
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_name(target: Path) -> Path:
    """A hidden name beside `target`, unique per process and thread, that no reader's glob matches."""
    return target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """Yields a temporary path to write (a file or a folder); it replaces `target` when the block ends
    without an error and is removed otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> Path:
    with replacing(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_json(target: Path, obj: Any) -> Path:
    return write_text(target, json.dumps(obj, indent=1, default=str) + "\n")
