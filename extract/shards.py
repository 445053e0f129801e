"""Extraction beyond one process: the subset of a split is cut into shards, one dask task each (one
per GPU worker), each writing its own resumable shard file; the shards are then joined into the
cache file with an HDF5 virtual dataset, without copying. A failed shard is re-run alone: finished
shard files are skipped. Readers check that every shard is there and complete (`store.open_complete`).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py

from zoomshot.cache import layout, locks, store
from zoomshot.cache.compute import resolve_device
from zoomshot.cache.atomic import replacing
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.settings import Project, parse_ref
from zoomshot.cache.subsets import subset_size

from .settings import ExtractCfg


def shard_ranges(n_items: int, n_shards: int, batch: int) -> list[tuple[int, int]]:
    """Contiguous ranges whose boundaries fall on whole batches, so every shard replays the batches
    of a single-process run (identical numbers)."""
    n_batches = -(-n_items // batch)
    cuts = [round(i * n_batches / n_shards) * batch for i in range(n_shards + 1)]
    cuts = [min(c, n_items) for c in cuts]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def extract_shard(project: Project, settings: ExtractCfg, ref: str, targets: dict[str, str],
                  items: tuple[int, int]) -> list[str]:
    """One dask task: build the encoders on this worker's device and extract one range."""
    from .runner import Models, SplitJob, extract_split

    device = resolve_device(settings.device, "extract.device")
    paths = {n: Path(p) for n, p in targets.items()}
    with locks.holding(list(paths.values())):
        todo = {n: p for n, p in paths.items() if not p.exists()}
        if not todo:
            return []
        job = SplitJob(ref, todo, items)
        models = Models(project, device, say=lambda line: None)
        return [str(p) for p in extract_split(project, settings, job, models, device, progress=False)]


def join(target: Path, shards: list[Path]) -> Path:
    """Write `target` as virtual datasets over the shard files (which stay beside it)."""
    metas = []
    for p in shards:
        with store.open_complete(p) as f:
            metas.append((p, f["features"].shape, dict(f.attrs)))
    n, dim = sum(m[1][0] for m in metas), metas[0][1][1]
    with replacing(target) as tmp:
        with h5py.File(tmp, "w") as out:
            for name, shape, dtype in (("features", (n, dim), "float16"), ("index", (n,), "int64"),
                                       ("labels", (n,), "int64")):
                layout_, row = h5py.VirtualLayout(shape=shape, dtype=dtype), 0
                for p, (rows, _), _ in metas:
                    layout_[row:row + rows] = h5py.VirtualSource(p.name, name, shape=(rows, *shape[1:]))
                    row += rows
                out.create_virtual_dataset(name, layout_)
            attrs = {k: v for k, v in metas[0][2].items() if k not in ("shard_items", "features_sha256")}
            bad = [i for m in metas for i in json.loads(m[2].get("bad_items", "[]"))]
            out.attrs.update({**attrs, "rows_done": n, "items_done": sum(int(m[2]["items_done"]) for m in metas),
                              "bad_items": json.dumps(bad), "bad_count": len(bad),
                              "shards": json.dumps([p.name for p in shards])})
        with h5py.File(tmp, "r") as f:      # read-only, so HDF5 opens the shard files read-only too
            digest = store.sha256_rows(f["features"])
        with h5py.File(tmp, "r+") as f:
            f.attrs.update({"features_sha256": digest, "complete": True})
    return target


def run_sharded(project: Project, settings: ExtractCfg, jobs: list, say=print) -> list[Path]:
    """Extract every job's split on the dask cluster at `settings.scheduler`, then join the shards
    (the caller holds the targets' locks)."""
    from dask.distributed import as_completed

    from zoomshot.cache.compute import client

    from .datasets import open_split

    with client(settings.scheduler) as c:
        k = settings.shards or max(1, len(c.scheduler_info()["workers"]))
        plan, parts = [], {}
        for job in jobs:
            name, split = parse_ref(job.ref)
            n_items = subset_size(len(open_split(project.dataset(name).spec(), split).dataset),
                                  project.subsets.fraction_of(job.ref))
            ranges = shard_ranges(n_items, k, settings.batch_size)
            for t in job.targets.values():
                parts[t] = [layout.shard_path(t, i, len(ranges)) for i in range(len(ranges))]
            for i, items in enumerate(ranges):
                targets = {n: str(parts[t][i]) for n, t in job.targets.items()}
                plan.append((job, targets, items))
        futures = {c.submit(extract_shard, project, settings, job.ref, targets, items, pure=False): job
                   for job, targets, items in plan}
        failed = []
        for fut in as_completed(futures):
            if fut.status == "error":
                failed.append(f"{futures[fut].ref}: {fut.exception()}")
            else:
                say(f"  shard done: {', '.join(Path(p).name for p in fut.result()) or 'already there'}")
    if failed:
        raise PipelineError(f"{len(failed)} shard(s) failed ({failed[0]}); run `pipeline extract` again to "
                            f"re-run only those")
    return [join(t, shards) for t, shards in parts.items() if not t.exists()]
