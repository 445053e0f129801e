"""Where work runs, decided in one place for every stage: a `dask.distributed` cluster (sharded
extraction, fit sweeps) and a torch device."""
from __future__ import annotations

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
