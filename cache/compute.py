"""Where work runs, decided in one place for every stage: a `dask.distributed` cluster (sharded
extraction, fit sweeps) and a torch device."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import PipelineError


@contextmanager
def client(address: str) -> Iterator["distributed.Client"]:  # noqa: F821
    """A client of the scheduler at `address`, closed afterwards; an unreachable one is one clear line."""
    from dask.distributed import Client

    try:
        c = Client(address, timeout="10s")
    except OSError as e:
        raise PipelineError(f"cannot reach the dask scheduler at {address}: {e}") from None
    with c:
        yield c


def resolve_device(name: str, key: str) -> str:
    """`auto` -> cuda when a GPU is visible, else cpu; a CUDA device asked for without a GPU is one line
    naming the config key. Resolved where the work runs (a cluster's worker may have a GPU the client lacks)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"{key} = {name!r} asked for but no CUDA GPU is visible: use 'cpu' (or 'auto')")
    return name


def cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` (at least 1, at most what it had) for the block, then restored.

    The setting is global to the process: a stage that runs other CPU work beside torch (DataLoader
    workers decoding, the sweep's concurrent fits) gives torch only the cores that work leaves, rather
    than more threads than cores fighting for them, and a fixed thread count fixes the last bits of a
    reduction.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
