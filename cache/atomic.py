"""One way to write a finished file: to a temporary name beside it, then an atomic rename.

A reader therefore sees the old file or the new one, never half of one; a crash or a full disk leaves
the target as it was. (Feature files are written the same way, through a resumable `.partial`.) A
temporary name holds its writer's host and pid, so that the next command writing to the same folder
removes what a killed writer left (`remove_stale`) and never a live writer's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import faults

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())
_TEMPORARY = re.compile(r"\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-\d+\.tmp$")


def temporary_name(target: Path) -> Path:
    """A hidden name beside `target`, unique per host, process and thread, that no reader's glob matches."""
    return target.with_name(f".{target.name}.{_HOST}-{os.getpid()}-{threading.get_ident()}.tmp")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def remove_stale(folder: Path) -> list[Path]:
    """Remove the temporary files and folders under `folder` whose writer, on this host, no longer runs
    (killed before its rename); those of a running writer or of another host stay. Returns the removed."""
    removed = []
    for p in sorted(Path(folder).rglob(".*.tmp")):
        m = _TEMPORARY.search(p.name)
        if m is None or m["host"] != _HOST or _running(int(m["pid"])) or not p.exists():
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """Yields a temporary path to write (a file or a folder); it replaces `target` when the block ends
    without an error and is removed otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        yield tmp
        faults.point("atomic.replace")
        os.replace(tmp, target)
    except OSError as e:
        if e.filename is None:  # a write() that the disk refused names no file: name the one written
            e.filename = str(target)
        raise
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
