"""Stage 1: every image decoded once per batch, transformed per encoder, fed to every encoder that
still needs it, and appended to that encoder's resumable cache file.

Several `pipeline extract` may share one cache: each holds the locks of the files it writes, so a
second one waits for them, says so, and then finds them done.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from zoomshot.cache import atomic, faults, layout, locks, store
from zoomshot.cache.compute import resolve_device
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.settings import IMPORTED, Project, parse_ref
from zoomshot.cache.subsets import subset_indices

from .datasets import open_split
from .decode import DevicePixels, decode_views, encoded_jpeg, first_resize, uint8_chw
from .encoders import Encoder, build_encoder
from .prompts import class_prompts, load_templates
from .settings import ExtractCfg
from .shards import batch_plan, run_sharded

Say = Callable[[str], None]


def precision(device: str) -> str:
    """The numbers the encoders compute in: bf16 autocast on CUDA, float32 elsewhere."""
    return "bf16" if device.startswith("cuda") else "fp32"


def _autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def versions() -> dict:
    from importlib.metadata import version

    import open_clip
    import timm

    return {
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "timm": timm.__version__,
        "project": version("zoomshot-pipeline"),
    }


class Decoded(Dataset):
    """Decodes item `indices[i]` once (JPEGs at the scale each view's `sizes` allows) and applies each
    distinct transform, or with `pixels` returns the uint8 decodes (a JPEG's bytes, with `encoded`) for
    `DevicePixels` to finish on the GPU; a bad image becomes a string saying why."""

    def __init__(
        self,
        dataset: Dataset,
        indices: np.ndarray,
        transforms: list,
        sizes: list | None = None,
        pixels: bool = False,
        encoded: bool = False,
    ):
        self.dataset, self.indices, self.transforms = dataset, indices, transforms
        self.sizes = sizes or [None] * len(transforms)  # None: every view from the full-size decode
        self.pixels, self.encoded = pixels, encoded

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = int(self.indices[i])
        try:
            image, label = self.dataset[idx]
            if self.encoded and (data := encoded_jpeg(image)) is not None:
                return idx, int(label), ([torch.frombuffer(bytearray(data), dtype=torch.uint8)], [0] * len(self.sizes))
            decoded, which = decode_views(image, self.sizes)
            if self.pixels:
                return idx, int(label), ([uint8_chw(d) for d in decoded], which)
            return idx, int(label), [t(decoded[k]) for t, k in zip(self.transforms, which)]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL on corrupt files
            return idx, -1, f"{type(e).__name__}: {' '.join(str(e).split())}"  # one line, for the list


def item_name(dataset: Dataset, idx: int) -> str:
    """Where item `idx` comes from: its file for a folder of images, its shard and key for tar shards,
    else its index."""
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return str(samples[idx][0])
    return dataset.describe(idx) if hasattr(dataset, "describe") else f"item {idx}"


def _report_bad(job: SplitJob, dataset: Dataset, writers: dict, reasons: dict[int, str], say: Say) -> None:
    """One line naming how many images the split skipped and the first few; every one, with why, in a
    text file beside each cache file (items skipped before a resume keep no reason)."""
    bad = sorted({i for w in writers.values() for i in w.bad_items})
    names = {i: item_name(dataset, i) for i in bad}  # once per item (a tar sample is read to name it)
    for n, w in writers.items():
        if w.bad_items:
            atomic.write_text(
                layout.bad_list_path(job.targets[n]),
                "".join(
                    f"{i}\t{names[i]}\t{reasons.get(i, 'skipped before the extraction resumed')}\n"
                    for i in sorted(w.bad_items)
                ),
            )
    if bad:
        first = ", ".join(names[i] for i in bad[:3]) + (", ..." if len(bad) > 3 else "")
        listed = layout.bad_list_path(next(job.targets[n] for n, w in writers.items() if w.bad_items))
        say(
            f"{job.ref}: skipped {len(bad)} unreadable image(s) for every encoder: {first} (all of them, with "
            f"the reasons: {listed})"
        )


def collate(items):
    """(items, index, labels, views: one stacked batch per transform or the items' uint8 decodes, bad)."""
    good = [it for it in items if not isinstance(it[2], str)]
    bad = [(it[0], it[2]) for it in items if isinstance(it[2], str)]
    index = np.array([it[0] for it in good], dtype=np.int64)
    labels = np.array([it[1] for it in good], dtype=np.int64)
    if good and isinstance(good[0][2], tuple):  # (uint8 decodes, which) for DevicePixels
        return len(items), index, labels, [it[2] for it in good], bad
    views = [_stacked(v) for v in zip(*[it[2] for it in good])] if good else []
    return len(items), index, labels, views, bad


def _stacked(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One batch tensor. In a DataLoader worker it is made in shared memory here, as torch's default_collate
    does, so a shared memory that cannot grow fails inside the fetch, whose error reaches the main process,
    and not later in the worker queue's feeder thread, which drops the batch and leaves the main one waiting."""
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(tensors)
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype).share_memory_()
    return torch.stack(tensors, out=out)


def loader_workers(asked: int) -> int:
    """DataLoader workers: `asked`, or with -1 one per core this process may use, less one for the
    main process (it runs the encoders and writes). No workers inside a daemonic process (a dask
    worker, unless dask's `distributed.worker.daemon` is off), which may not have children."""
    import multiprocessing
    import os

    if multiprocessing.current_process().daemon:
        return 0
    return max(0, len(os.sched_getaffinity(0)) - 1) if asked < 0 else asked


def _loader(decoded: Decoded, batches: list, settings: ExtractCfg, device: str) -> DataLoader:
    """Workers decode ahead (`prefetch` batches each) while the main process runs the encoders; on CUDA
    batches come in pinned memory, so the copies to the GPU do not block."""
    workers = loader_workers(settings.num_workers)
    return DataLoader(
        decoded,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.startswith("cuda"),
        persistent_workers=workers > 0,
        prefetch_factor=settings.prefetch if workers else None,
    )


class Models:
    """The encoders of one command, each built on first use (with a line saying so) and then kept."""

    def __init__(self, project: Project, device: str, say: Say):
        self.project, self.device, self.say, self.built = project, device, say, {}

    def __getitem__(self, name: str) -> Encoder:
        if name not in self.built:
            cfg = self.project.encoder(name)
            self.say(
                f"loading {name}: {cfg.family} {cfg.model} ({cfg.pretrained or 'random weights'}) on {self.device}"
            )
            self.built[name] = build_encoder(cfg.spec(), self.device)
        return self.built[name]


@dataclass
class SplitJob:
    ref: str
    targets: dict[str, Path]  # encoder name -> final cache path (or shard path)
    items: tuple[int, int] | None = None  # the range of the subset a shard covers; None = all of it


def _encode(enc: Encoder, images: torch.Tensor | None, micro_batch: int, device: str) -> np.ndarray:
    """Features of one batch, in micro-batches where an encoder needs less memory per pass."""
    if images is None:
        return np.zeros((0, enc.dim), np.float32)
    parts = images.split(micro_batch) if micro_batch else [images]
    with torch.inference_mode(), _autocast(device):
        return torch.cat([enc.encode_image(p.to(device, non_blocking=True)).float().cpu() for p in parts]).numpy()


def _writer(
    project: Project,
    settings: ExtractCfg,
    job: SplitJob,
    name: str,
    enc: Encoder,
    data,
    subset_len: int,
    device: str,
    say: Say,
) -> store.FeatureWriter:
    dataset, split = parse_ref(job.ref)
    cfg = project.encoder(name)
    preprocess = {
        **enc.preprocess,
        "pixels": settings.pixels(),
        "jpeg_draft_size": first_resize(enc.transform) if settings.jpeg_draft else None,
    }
    attrs = {
        "encoder": name,
        "model": cfg.model,
        "pretrained": cfg.pretrained,
        "identity": cfg.identity(),
        "encoder_key": cfg.key(),
        "dataset": dataset,
        "split": split,
        "dataset_identity": project.split_identity(dataset, split),
        "fraction": project.subsets.fraction_of(job.ref),
        "seed": project.subsets.subset_seed,
        "split_size": len(data.dataset),
        "classnames": data.classnames,
        "preprocess": preprocess,
        "versions": versions(),
        "device": device,
        "precision": precision(device),
        **({"shard_items": list(job.items)} if job.items else {}),
    }
    resume = {
        "batch_size": settings.batch_size,
        "precision": precision(device),
        "preprocess": preprocess,
        "encoder_key": cfg.key(),
    }
    return store.FeatureWriter(job.targets[name], enc.dim, attrs, resume, subset_len, say)


def _gpu_pixels(settings: ExtractCfg, device: str) -> bool:
    """Whether the settings ask for the GPU resize/decode path; it needs CUDA."""
    if (settings.gpu_preprocess or settings.gpu_decode) and not device.startswith("cuda"):
        raise PipelineError(
            f"[extract] gpu_preprocess / gpu_decode need a CUDA device, extraction runs on "
            f"{device!r}: set them to false (or device = 'cuda')"
        )
    return settings.gpu_preprocess or settings.gpu_decode


def _pixel_path(settings: ExtractCfg, transforms: list, device: str) -> DevicePixels | None:
    """What finishes a batch on the GPU, or None where the CPU transforms do it all."""
    return DevicePixels(transforms, device) if _gpu_pixels(settings, device) else None


def extract_split(
    project: Project,
    settings: ExtractCfg,
    job: SplitJob,
    models: Models,
    device: str,
    progress: bool = True,
    say: Say = print,
) -> list[Path]:
    """Extract one split (or one shard of it) for every encoder of `job.targets`; the caller holds
    their locks."""
    name, split = parse_ref(job.ref)
    data = open_split(project.dataset(name).spec(), split)
    subset = subset_indices(len(data.dataset), project.subsets.fraction_of(job.ref), project.subsets.subset_seed)
    plan = batch_plan(subset, settings.batch_size, data.groups)
    if job.items is not None:
        plan = [(a - job.items[0], b - job.items[0]) for a, b in plan if job.items[0] <= a < job.items[1]]
        subset = subset[job.items[0] : job.items[1]]
    todo = job.targets
    views = list(dict.fromkeys(repr(models[n].transform) for n in todo))
    view_of = {n: views.index(repr(models[n].transform)) for n in todo}
    transforms = [next(models[n].transform for n in todo if view_of[n] == i) for i in range(len(views))]
    on_device = _pixel_path(settings, transforms, device)
    sizes = [first_resize(t) if settings.jpeg_draft else None for t in transforms]
    writers = {}

    def open_writers() -> None:
        for n in todo:
            writers[n] = _writer(project, settings, job, n, models[n], data, len(subset), device, say)

    try:
        open_writers()
        start = min(w.items_done for w in writers.values())
        if start not in [a for a, _ in plan] + [len(subset)]:
            raise PipelineError(
                f"{job.ref}: a partial file stopped at item {start}, inside a batch; remove it "
                f"(`pipeline cache rm`) and extract again"
            )
        decoded = Decoded(data.dataset, subset[start:], transforms, sizes, on_device is not None, settings.gpu_decode)
        loader = _loader(decoded, [range(a - start, b - start) for a, b in plan if a >= start], settings, device)
        if loader.num_workers:
            # Workers are forked processes: had they inherited the open files, they would hold HDF5's lock
            # on them after a kill -9 of this process, and a quick re-run could not resume them.
            for w in writers.values():
                w.close()
            loader = iter(loader)
            open_writers()
        bar = tqdm(
            total=len(subset),
            initial=start,
            unit="img",
            disable=not progress,
            desc=f"extract {job.ref} [{', '.join(todo)}]",
        )
        pos, reasons = start, {}
        for n_items, index, labels, batch_views, bad in loader:
            if on_device is not None:
                batch_views, index, labels, bad = on_device(batch_views, index, labels, bad)
            if bad and settings.on_bad_image == "fail":
                raise PipelineError(
                    f"unreadable image {item_name(data.dataset, bad[0][0])} in {job.ref}: "
                    f"{bad[0][1]} (set on_bad_image = 'skip' to skip it for every encoder)"
                )
            reasons.update(bad)
            for n, w in writers.items():
                if w.items_done > pos:  # this encoder got past here before an interruption
                    continue
                feats = _encode(
                    models[n], batch_views[view_of[n]] if len(index) else None, project.encoder(n).micro_batch, device
                )
                w.append(feats, index, labels, n_items, [b[0] for b in bad])
            pos += n_items
            bar.update(n_items)
            faults.point("extract.batch")
        bar.close()
        if any(w.rows_done == 0 for w in writers.values()):
            raise PipelineError(f"no readable image in {job.ref}; nothing was written")
        _report_bad(job, data.dataset, writers, reasons, say)
        return [w.finish() for w in writers.values()]
    finally:
        for w in writers.values():
            w.close()


def extract_range(
    project: Project, settings: ExtractCfg, ref: str, targets: dict[str, str], items: tuple[int, int]
) -> list[str]:
    """One dask task of a sharded extraction (`shards.run_sharded`): build the encoders on this worker's
    device and extract one range of the split's subset into the shard files `targets`."""
    device = resolve_device(settings.device, "extract.device")
    paths = {n: Path(p) for n, p in targets.items()}
    with locks.holding(list(paths.values())):
        todo = {n: p for n, p in paths.items() if not p.exists()}
        if not todo:
            return []
        models = Models(project, device, say=lambda line: None)
        return [
            str(p) for p in extract_split(project, settings, SplitJob(ref, todo, items), models, device, progress=False)
        ]


def _text_jobs(project: Project, settings: ExtractCfg) -> list[tuple[Path, Callable[[], tuple]]]:
    """(target, how to make its prompts) of every text file the extraction still lacks."""
    jobs = []
    for name in dict.fromkeys(parse_ref(r)[0] for r in settings.splits):
        path = layout.class_text_path(project, name)
        if not path.exists():
            first_split = next(parse_ref(r)[1] for r in settings.splits if parse_ref(r)[0] == name)

            def make(name=name, split=first_split):
                data = open_split(project.dataset(name).spec(), split)
                templates = load_templates(project.clip.templates, Path(project.clip.templates_file))
                prompts, cop = class_prompts(templates, data.classnames)
                return (
                    prompts,
                    cop,
                    data.classnames,
                    {"dataset": name, "templates": project.clip.templates, "class_groups": data.class_groups},
                )

            jobs.append((path, make))
    path = layout.classfree_text_path(project)
    if not path.exists():
        prompts = layout.classfree_prompts(project)
        jobs.append((path, lambda: (prompts, -np.ones(len(prompts), np.int64), [], {"prompt_set": "classfree"})))
    for ref in settings.captions:
        path = layout.caption_text_path(project, ref)
        if not path.exists():
            jobs.append((path, lambda ref=ref: _captions(project, ref)))
    return jobs


def _captions(project: Project, ref: str) -> tuple:
    """The captions of every image of the split's CLIP cache file, in its row order; `class_of_prompt`
    holds each caption's image (its dataset index)."""
    name, split = parse_ref(ref)
    data = open_split(project.dataset(name).spec(), split)
    if data.captions is None:
        raise PipelineError(
            f"dataset {name!r} ({project.dataset(name).kind}) has no captions: remove {ref} from [extract] captions"
        )
    rows = layout.feature_path(project, project.clip.name, ref)
    if not rows.exists():
        raise PipelineError(
            f"[extract] captions names {ref}, whose images are not extracted: add it to [extract] splits"
        )
    with store.open_complete(rows) as f:
        index = f["index"][:]
    per_image = [data.captions(int(i)) for i in index]
    image_of = np.repeat(index, [len(c) for c in per_image]).astype(np.int64)
    return (
        [c for caps in per_image for c in caps],
        image_of,
        [],
        {"dataset": name, "split": split, "captions_of": rows.name},
    )


def extract_text(project: Project, jobs: list, models: Models, device: str, progress: bool, say: Say) -> list[Path]:
    """Per-prompt text embeddings of each dataset's class prompts, of the class-free set and of captions,
    batch by batch into a resumable partial file (an interrupted run goes on from the prompts done)."""
    written = []
    for path, make in jobs:
        with locks.holding([path], say):
            if path.exists():
                say(f"{path.name}: written by another process meanwhile")
                continue
            prompts, cop, classnames, attrs = make()
            digest = hashlib.sha256(json.dumps([prompts, cop.tolist()]).encode()).hexdigest()
            resume = {
                "batch_size": project.clip.batch_size,
                "precision": precision(device),
                "clip_key": project.clip.key(),
                "prompts_sha256": digest,
            }
            writer = store.TextWriter(
                path,
                models[project.clip.name].dim,
                prompts,
                cop,
                classnames,
                {
                    **attrs,
                    "clip": project.clip.name,
                    "identity": project.clip.identity(),
                    "clip_key": project.clip.key(),
                    "versions": versions(),
                    "device": device,
                    "precision": precision(device),
                },
                resume,
                say,
            )
            written.append(
                _encode_prompts(writer, models[project.clip.name], project.clip.batch_size, device, progress, say)
            )
    return written


def _encode_prompts(writer: store.TextWriter, clip: Encoder, batch: int, device: str, progress: bool, say: Say) -> Path:
    """Encode the writer's prompts from where its partial file stopped, then finish the file."""
    prompts = writer.prompts
    try:
        start = writer.rows_done
        if start:
            say(f"resuming {writer.partial.name} at prompt {start:,} of {len(prompts):,}")
        bar = tqdm(
            total=len(prompts),
            initial=start,
            unit="prompt",
            disable=not progress,
            desc=f"encode text {writer.target.name}",
        )
        for i in range(start, len(prompts), batch):
            with torch.inference_mode(), _autocast(device):
                writer.append(clip.encode_text(prompts[i : i + batch], device).float().cpu().numpy())
            bar.update(min(batch, len(prompts) - i))
            faults.point("extract.text_batch")
        bar.close()
        return writer.finish()
    finally:
        writer.close()


def _prepare(project: Project, settings: ExtractCfg, say: Say) -> None:
    """Downloads first: a dataset's key counts the files under its root."""
    for ref in settings.splits:
        ds = project.dataset(parse_ref(ref)[0])
        if ds.options.get("download"):
            say(f"checking {ds.name} under {ds.root} (options.download = true)")
            open_split(ds.spec(), parse_ref(ref)[1])


def _record_data(project: Project, settings: ExtractCfg, say: Say) -> None:
    """The data fingerprint is taken here, once, from the files, and recorded in the cache: later
    commands find their files from the record, also where the images are not (`cache/records.py`).
    A split whose files changed since the last extraction is said, with what showed it."""
    for ref in settings.splits:
        name, split = parse_ref(ref)
        record = project.data_record(name)
        before = record.recorded_split(split)
        if before not in (None, record.split_data(split, fresh=True)):
            shown = "the bytes of its files (content_hash)" if record.content_hash else "the listing of its files"
            say(f"{ref}: {shown} changed since the last extraction: its features are extracted anew")
    for name in dict.fromkeys(parse_ref(r)[0] for r in settings.splits):
        project.data_record(name).classes(fresh=True)


def run_extract(
    project: Project, settings: ExtractCfg, progress: bool = True, say: Say = print, timings: dict | None = None
) -> dict[str, list[Path]]:
    """Extract every configured split with CLIP and every encoder; finished files are skipped.

    With `settings.scheduler` or `settings.cluster`, splits are sharded over the dask cluster's workers
    (extract/shards.py). `timings` receives the seconds spent on images and on text (for `pipeline rehearse`).
    """
    timings = {} if timings is None else timings
    start = time.perf_counter()
    device = resolve_device(settings.device, "extract.device")
    if not settings.distributed:  # a cluster's workers resolve their own device
        _gpu_pixels(settings, device)
    _prepare(project, settings, say)
    _record_data(project, settings, say)
    names = [m.name for m in [project.clip, *project.encoders] if m.model != IMPORTED]  # imported: no model
    jobs = []
    for ref in settings.splits:
        targets = {n: layout.feature_path(project, n, ref) for n in names}
        targets = {n: p for n, p in targets.items() if not p.exists()}
        if targets:
            jobs.append(SplitJob(ref, targets))
    written: dict[str, list[Path]] = {"features": [], "text": []}
    models = Models(project, device, say)
    with locks.holding([p for job in jobs for p in job.targets.values()], say):
        jobs = [SplitJob(j.ref, {n: p for n, p in j.targets.items() if not p.exists()}) for j in jobs]
        jobs = [j for j in jobs if j.targets]
        if settings.distributed and jobs:
            written["features"] = run_sharded(project, settings, jobs, extract_range, say)
            jobs = []
        for job in jobs:
            written["features"] += extract_split(project, settings, job, models, device, progress, say)
    timings["features_s"] = time.perf_counter() - start
    text_jobs = _text_jobs(project, settings) if project.clip.model != IMPORTED else []
    start = time.perf_counter()
    if text_jobs:
        written["text"] = extract_text(project, text_jobs, models, device, progress, say)
    timings["text_s"] = time.perf_counter() - start
    return written
