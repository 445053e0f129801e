"""The one error type that the CLI turns into a single line and exit code 2, and the one test of
whether an error is the disk refusing a write, whatever library reports it."""

from __future__ import annotations

import errno
import os

#: A full disk, a file-size limit (`ulimit -f`, with SIGXFSZ ignored) and a used-up quota.
DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_DISK_WORDS = tuple(os.strerror(n) for n in DISK_ERRNOS)  # torch, h5py, safetensors report errno as text


class PipelineError(Exception):
    """Bad input or state a user can fix: the message says what is wrong and what to do."""


def refused_write(e: BaseException) -> BaseException | None:
    """The error in `e`'s chain (itself, its cause or context) that is the disk refusing a write, if any:
    an OSError whose errno says so, or a library error whose text does (torch's 'unable to resize file'
    of a shared-memory batch, an HDF5 write)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS or any(w in str(e) for w in _DISK_WORDS):
            return e
        e = e.__cause__ or e.__context__
    return None


class DiskFull(PipelineError):
    """A write the disk refused: one line naming the disk problem, and the advice to re-run."""

    def __init__(self, e: BaseException):
        if isinstance(e, OSError) and e.strerror:
            what = e.strerror + (f" writing {e.filename}" if e.filename else "")
        else:
            what = str(e).strip().splitlines()[-1][:160]
        super().__init__(
            f"the disk is full or a file-size limit was reached ({what}): free space (or raise the "
            f"limit) and run the same command again"
        )
