"""Extraction beyond one process: the subset of a split is cut into shards, one dask task each (one
per GPU worker; whole tar shards of a webdataset), each writing its own resumable shard file; the shards
are then joined into the cache file with an HDF5 virtual dataset, without copying. A failed shard is
re-run alone: finished shard files are skipped. Readers check that every shard is there and complete
(`store.open_complete`).

This module plans and joins; what a task runs is the runner's (`runner.extract_range`, handed in), so
the runner imports this module and never the other way round.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import h5py
import numpy as np

from zoomshot.cache import layout, store
from zoomshot.cache.atomic import replacing
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.settings import Project, parse_ref
from zoomshot.cache.subsets import subset_indices

from .settings import ExtractCfg


def group_starts(subset: np.ndarray, groups: list[int] | None) -> list[int]:
    """Positions in the (sorted) subset where a group of the split starts (a webdataset's tar shard);
    [0] where the split has no groups."""
    if not groups:
        return [0]
    return sorted({0, *np.searchsorted(subset, groups).tolist()} - {len(subset)})


def batch_plan(subset: np.ndarray, batch: int, groups: list[int] | None = None) -> list[tuple[int, int]]:
    """(start, end) positions of the subset's batches: runs of `batch` items that never cross a group
    start, so a worker given whole groups replays exactly the batches of a single-process run."""
    starts = group_starts(subset, groups)
    return [
        (a, min(a + batch, end)) for s, end in zip(starts, starts[1:] + [len(subset)]) for a in range(s, end, batch)
    ]


def shard_ranges(plan: list[tuple[int, int]], n_shards: int, cuts: list[int]) -> list[tuple[int, int]]:
    """Contiguous ranges of about equal size, cut only at `cuts` (batch starts, or group starts to hand
    whole tar shards to each worker), so every shard replays the batches of a single-process run
    (identical numbers)."""
    n = plan[-1][1]
    cuts_ = np.array(cuts)
    wanted = np.arange(1, n_shards) * n / n_shards
    picked = (
        sorted({0, n, *cuts_[np.abs(cuts_[None, :] - wanted[:, None]).argmin(1)].tolist()}) if n_shards > 1 else [0, n]
    )
    return [(a, b) for a, b in zip(picked, picked[1:]) if b > a]


def join(target: Path, shards: list[Path]) -> Path:
    """Write `target` as virtual datasets over the shard files (which stay beside it)."""
    metas = []
    for p in shards:
        with store.open_complete(p) as f:
            metas.append((p, f["features"].shape, dict(f.attrs)))
    n, dim = sum(m[1][0] for m in metas), metas[0][1][1]
    with replacing(target) as tmp:
        with h5py.File(tmp, "w") as out:
            for name, shape, dtype in (
                ("features", (n, dim), "float16"),
                ("index", (n,), "int64"),
                ("labels", (n,), "int64"),
            ):
                layout_, row = h5py.VirtualLayout(shape=shape, dtype=dtype), 0
                for p, (rows, _), _ in metas:
                    layout_[row : row + rows] = h5py.VirtualSource(p.name, name, shape=(rows, *shape[1:]))
                    row += rows
                out.create_virtual_dataset(name, layout_)
            attrs = {k: v for k, v in metas[0][2].items() if k not in ("shard_items", "features_sha256")}
            bad = [i for m in metas for i in json.loads(m[2].get("bad_items", "[]"))]
            out.attrs.update(
                {
                    **attrs,
                    "rows_done": n,
                    "items_done": sum(int(m[2]["items_done"]) for m in metas),
                    "bad_items": json.dumps(bad),
                    "bad_count": len(bad),
                    "shards": json.dumps([p.name for p in shards]),
                }
            )
        with h5py.File(tmp, "r") as f:  # read-only, so HDF5 opens the shard files read-only too
            digest = store.sha256_rows(f["features"])
        with h5py.File(tmp, "r+") as f:
            f.attrs.update({"features_sha256": digest, "complete": True})
    return target


def anchored(project: Project) -> Project:
    """The project with dataset roots and option files made absolute: a dask worker runs in another
    folder. Keys do not change (they hold content, not paths). The output folders too: the cache
    holds the data records."""

    def absolute(v):
        return str(Path(v).absolute()) if isinstance(v, str) and v and Path(v).exists() else v

    paths = replace(project.paths, **{f.name: str(project.path(f.name)) for f in fields(project.paths)})
    return replace(
        project,
        paths=paths,
        datasets=[
            replace(d, root=absolute(d.root), options={k: absolute(v) for k, v in d.options.items()})
            for d in project.datasets
        ],
    )


#: A dask task: (project, settings, split ref, encoder name -> shard file, range of the subset) -> the
#: shard files it wrote.
ExtractRange = Callable[[Project, ExtractCfg, str, dict[str, str], tuple[int, int]], list[str]]


def run_sharded(
    project: Project, settings: ExtractCfg, jobs: list, extract_range: ExtractRange, say=print
) -> list[Path]:
    """Extract every job's split on the dask cluster at `settings.scheduler` (or one started as
    `settings.cluster` says), one `extract_range` task per shard, then join the shards (the caller
    holds the targets' locks)."""
    from dask.distributed import as_completed

    from zoomshot.cache.compute import client, dask_cluster

    from .datasets import open_split

    with (
        dask_cluster(settings.scheduler, settings.cluster, settings.cluster_jobs, settings.cluster_options) as workers,
        client(workers.address) as c,
    ):
        k = settings.shards or max(1, workers.planned or len(c.scheduler_info()["workers"]))
        plan, parts = [], {}
        for job in jobs:
            name, split = parse_ref(job.ref)
            data = open_split(project.dataset(name).spec(), split)
            subset = subset_indices(
                len(data.dataset), project.subsets.fraction_of(job.ref), project.subsets.subset_seed
            )
            batches = batch_plan(subset, settings.batch_size, data.groups)
            cuts = group_starts(subset, data.groups) if data.groups else [a for a, _ in batches]
            ranges = shard_ranges(batches, k, cuts)
            for t in job.targets.values():
                parts[t] = [layout.shard_path(t, i, len(ranges)) for i in range(len(ranges))]
            for i, items in enumerate(ranges):
                targets = {n: str(parts[t][i]) for n, t in job.targets.items()}
                plan.append((job, targets, items))
        futures = {
            c.submit(
                extract_range,
                anchored(project),
                settings,
                job.ref,
                targets,
                items,
                pure=False,
                resources=workers.resources or None,
            ): job
            for job, targets, items in plan
        }
        failed = []
        for fut in as_completed(futures):
            if fut.status == "error":
                failed.append(f"{futures[fut].ref}: {fut.exception()}")
            else:
                say(f"  shard done: {', '.join(Path(p).name for p in fut.result()) or 'already there'}")
    if failed:
        raise PipelineError(
            f"{len(failed)} shard(s) failed ({failed[0]}); run `pipeline extract` again to re-run only those"
        )
    return [join(t, shards) for t, shards in parts.items() if not t.exists()]
