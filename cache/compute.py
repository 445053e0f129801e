"""Where work runs, decided in one place for every stage: a `dask.distributed` cluster (sharded
extraction, fit sweeps) and a torch device.

A cluster is either given by address (`scheduler`) or started for the command by an existing engine,
each an optional extra: dask-cuda's `LocalCUDACluster` (one worker per GPU of this machine) or
dask-jobqueue's `SLURMCluster` / `PBSCluster` (one batch job per worker). See docs/scale.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from .errors import PipelineError


@contextmanager
def client(address: str) -> Iterator[distributed.Client]:  # noqa: F821
    """A client of the scheduler at `address`, closed afterwards; an unreachable one is one clear line."""
    from dask.distributed import Client

    try:
        c = Client(address, timeout="10s")
    except OSError as e:
        raise PipelineError(f"cannot reach the dask scheduler at {address}: {e}") from None
    with c:
        yield c


#: cluster kind -> (module, class, distribution, extra of this project that installs it)
CLUSTERS = {
    "local-cuda": ("dask_cuda", "LocalCUDACluster", "dask-cuda", "cuda"),
    "slurm": ("dask_jobqueue", "SLURMCluster", "dask-jobqueue", "cluster"),
    "pbs": ("dask_jobqueue", "PBSCluster", "dask-jobqueue", "cluster"),
}
#: a batch job runs one worker process (one GPU), unless `cluster_options` says otherwise
JOB_DEFAULTS = {"processes": 1}
#: a job's worker has `cores` threads but one GPU: tasks that ask for it run one at a time there
GPU_TASK = {"GPU": 1}


def make_cluster(kind: str, options: dict[str, Any]) -> Any:
    """The `kind` cluster built with `options` (its scheduler starts here; no batch job is submitted
    yet); a missing extra or an option the engine rejects is one line."""
    module, name, dist, extra = CLUSTERS[kind]
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError:
        raise PipelineError(
            f"{dist} is not installed: pip install 'zoomshot-pipeline[{extra}]' "
            f"(needed by [extract] cluster = {kind!r})"
        ) from None
    try:
        if kind == "local-cuda":  # one single-threaded worker per visible GPU
            return cls(**options)
        resources = ",".join(f"{k}={v}" for k, v in GPU_TASK.items())
        return cls(
            **{
                **JOB_DEFAULTS,
                **options,
                "worker_extra_args": [*options.get("worker_extra_args", []), "--resources", resources],
            }
        )
    except (TypeError, ValueError, RuntimeError) as e:  # unknown keyword, missing cores/memory, no GPU
        raise PipelineError(
            f"cannot start the {kind} cluster with [extract] cluster_options {options}: "
            f"{(str(e).splitlines() or [type(e).__name__])[0]}"
        ) from None


class Workers(NamedTuple):
    address: str  # the scheduler's
    planned: int  # workers the cluster is meant to have; 0 = ask the scheduler
    resources: dict[str, int]  # what each task asks for (`submit(..., resources=)`)


@contextmanager
def dask_cluster(scheduler: str, kind: str, jobs: int, options: dict[str, Any]) -> Iterator[Workers]:
    """The cluster at `scheduler` as given, or a `kind` cluster started for the block (`jobs` batch jobs)
    and shut down after it."""
    if not kind:
        yield Workers(scheduler, 0, {})
        return
    import dask

    # non-daemonic workers may have children: the DataLoader's decoding processes (`loader_workers`)
    with dask.config.set({"distributed.worker.daemon": False}), make_cluster(kind, options) as started:
        if kind == "local-cuda":
            yield Workers(started.scheduler_address, len(started.workers), {})
        else:
            started.scale(jobs=jobs)  # the workers join as the queue starts the jobs; tasks wait for them
            processes = int(options.get("processes", JOB_DEFAULTS["processes"]))
            yield Workers(started.scheduler_address, jobs * processes, GPU_TASK)


def resolve_device(name: str, key: str) -> str:
    """`auto` -> cuda when a GPU is visible, else cpu; a CUDA device asked for without a GPU is one line
    naming the config key. Resolved where the work runs (a cluster's worker may have a GPU the client lacks)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"{key} = {name!r} asked for but no CUDA GPU is visible: use 'cpu' (or 'auto')")
    return name
