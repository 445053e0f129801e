"""Extraction beyond one process: the subset of a split is cut into shards, one dask task each (one
per GPU worker), each writing its own resumable shard file; the shards are then joined into the
cache file with an HDF5 virtual dataset, without copying. A failed shard is re-run alone: finished
shard files are skipped."""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py

from zoomshot.cache import catalog, store
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.subsets import subset_size
from zoomshot.cli import config as C


def shard_ranges(n_items: int, n_shards: int, batch: int) -> list[tuple[int, int]]:
    """Contiguous ranges whose boundaries fall on whole batches, so every shard replays the batches
    of a single-process run (identical numbers)."""
    n_batches = -(-n_items // batch)
    cuts = [round(i * n_batches / n_shards) * batch for i in range(n_shards + 1)]
    cuts = [min(c, n_items) for c in cuts]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def shard_path(target: Path, i: int, k: int) -> Path:
    return target.with_name(f"{target.stem}.shard{i:03d}-of-{k:03d}.h5")


def extract_shard(cfg: C.Config, ref: str, targets: dict[str, str], items: tuple[int, int]) -> list[str]:
    """One dask task: build the encoders on this worker's device and extract one range."""
    from .encoders import build_encoder
    from .runner import SplitJob, extract_split, resolve_device

    device = resolve_device(cfg.extract.device)
    todo = {n: Path(p) for n, p in targets.items() if not Path(p).exists()}
    encoders = {n: build_encoder(cfg.encoder(n).identity(), device) for n in todo}
    job = SplitJob(ref, todo, items)
    return [str(p) for p in (extract_split(cfg, job, encoders, device, progress=False) if todo else [])]


def join(target: Path, shards: list[Path]) -> Path:
    """Write `target` as virtual datasets over the shard files (which stay beside it)."""
    metas = []
    for p in shards:
        with store.open_complete(p) as f:
            metas.append((p, f["features"].shape, dict(f.attrs)))
    n, dim = sum(m[1][0] for m in metas), metas[0][1][1]
    tmp = store.partial_path(target)
    with h5py.File(tmp, "w") as out:
        for name, shape, dtype in (("features", (n, dim), "float16"), ("index", (n,), "int64"),
                                   ("labels", (n,), "int64")):
            layout, row = h5py.VirtualLayout(shape=shape, dtype=dtype), 0
            for p, (rows, _), _ in metas:
                layout[row:row + rows] = h5py.VirtualSource(p.name, name, shape=(rows, *shape[1:]))
                row += rows
            out.create_virtual_dataset(name, layout)
        attrs = {k: v for k, v in metas[0][2].items() if k not in ("shard_items", "features_sha256")}
        bad = [i for m in metas for i in json.loads(m[2].get("bad_items", "[]"))]
        out.attrs.update({**attrs, "rows_done": n, "items_done": sum(int(m[2]["items_done"]) for m in metas),
                          "bad_items": json.dumps(bad), "bad_count": len(bad),
                          "shards": json.dumps([p.name for p in shards])})
    with h5py.File(tmp, "r") as f:      # read-only, so HDF5 opens the shard files read-only too
        digest = catalog.sha256_rows(f["features"])
    with h5py.File(tmp, "r+") as f:
        f.attrs.update({"features_sha256": digest, "complete": True})
    os.replace(tmp, target)
    return target


def run_sharded(cfg: C.Config, jobs: list, scheduler: str, progress=print) -> list[Path]:
    """Extract every job's split on the dask cluster at `scheduler`, then join the shards."""
    from dask.distributed import Client, as_completed

    from .datasets import open_split

    try:
        client = Client(scheduler, timeout="10s")
    except OSError as e:
        raise PipelineError(f"cannot reach the dask scheduler at {scheduler}: {e}") from None
    with client:
        k = cfg.extract.shards or max(1, len(client.scheduler_info()["workers"]))
        plan, parts = [], {}
        for job in jobs:
            name, split = C.split_ref(job.ref)
            n_items = subset_size(len(open_split(cfg.dataset(name).identity(), split).dataset), cfg.extract.fraction_of(job.ref))
            ranges = shard_ranges(n_items, k, cfg.extract.batch_size)
            for t in job.targets.values():
                parts[t] = [shard_path(t, i, len(ranges)) for i in range(len(ranges))]
            for i, items in enumerate(ranges):
                targets = {n: str(parts[t][i]) for n, t in job.targets.items() if not t.exists()}
                plan.append((job, targets, items))
        futures = {client.submit(extract_shard, cfg, job.ref, targets, items, pure=False): (job, targets)
                   for job, targets, items in plan}
        failed = []
        for fut in as_completed(futures):
            if fut.status == "error":
                job, _ = futures[fut]
                failed.append(f"{job.ref}: {fut.exception()}")
            else:
                progress(f"  shard done: {', '.join(Path(p).name for p in fut.result())}")
    if failed:
        raise PipelineError(f"{len(failed)} shard(s) failed ({failed[0]}); run `pipeline extract` again to "
                            f"re-run only those")
    return [join(t, shards) for t, shards in parts.items() if not t.exists()]
