"""Several commands may share one cache and one runs folder: a writer holds an OS file lock (the
`filelock` library) on what it writes, so a second writer of the same file waits and then finds it
done, and nobody removes a file that another process is writing (DESIGN.md section 3).

Locks live in a `.locks/` folder beside the file they guard; the operating system releases them when
their process dies, so a `kill -9` never leaves a stale lock behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_DIR = ".locks"


def lock_path(path: Path) -> Path:
    return Path(path).parent / LOCK_DIR / f"{Path(path).name}.lock"


def _lock(path: Path) -> FileLock:
    target = lock_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(target, thread_local=False)


@contextmanager
def holding(paths: list[Path], say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the locks of `paths` (taken in sorted order, so two writers never deadlock), waiting for
    any that another process holds and saying so."""
    with ExitStack() as stack:
        for path in sorted(Path(p) for p in paths):
            lock = _lock(path)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if say:
                    say(f"waiting for {path.name}: another process is writing it")
                lock.acquire()
            stack.callback(lock.release)
        yield


@contextmanager
def trying(path: Path) -> Iterator[bool]:
    """Hold the lock of `path` if it is free; yields whether it was taken (never waits). In a folder that
    cannot be written (a read-only copy of the runs) nobody writes either: that counts as free."""
    try:
        lock = _lock(path)
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    except OSError:
        yield True
        return
    try:
        yield True
    finally:
        lock.release()
