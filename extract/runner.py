"""Stage 1: every image decoded once per batch, transformed per encoder, fed to every encoder that
still needs it, and appended to that encoder's resumable cache file."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from zoomshot.cache import catalog, store
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.subsets import subset_indices
from zoomshot.cli import config as C

from .datasets import open_split
from .encoders import Encoder, build_encoder
from .prompts import class_prompts, load_classfree, load_templates


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device {device!r} asked for but no CUDA GPU is visible: use device = 'cpu'")
    return device


def versions() -> dict:
    import open_clip
    import timm
    from importlib.metadata import version
    return {"torch": torch.__version__, "open_clip": open_clip.__version__, "timm": timm.__version__,
            "project": version("zoomshot-pipeline")}


class _Decoded(Dataset):
    """Decodes item `indices[i]` once and applies each distinct transform; a bad image becomes None."""

    def __init__(self, dataset: Dataset, indices: np.ndarray, transforms: list):
        self.dataset, self.indices, self.transforms = dataset, indices, transforms

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = int(self.indices[i])
        try:
            image, label = self.dataset[idx]
            image = image.convert("RGB")
            return idx, int(label), [t(image) for t in self.transforms]
        except (OSError, ValueError, SyntaxError) as e:   # what PIL raises on corrupt files
            return idx, -1, repr(e)


def _collate(items):
    good = [it for it in items if not isinstance(it[2], str)]
    bad = [(it[0], it[2]) for it in items if isinstance(it[2], str)]
    index = np.array([it[0] for it in good], dtype=np.int64)
    labels = np.array([it[1] for it in good], dtype=np.int64)
    views = [torch.stack(v) for v in zip(*[it[2] for it in good])] if good else []
    return len(items), index, labels, views, bad


@dataclass
class SplitJob:
    ref: str
    targets: dict[str, Path]           # encoder name -> final cache path (or shard path)
    items: tuple[int, int] | None = None   # the range of the subset a shard covers; None = all of it


def _autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _encode(enc: Encoder, images: torch.Tensor | None, micro_batch: int, device: str) -> np.ndarray:
    """Features of one batch, in micro-batches where an encoder needs less memory per pass."""
    if images is None:
        return np.zeros((0, enc.dim), np.float32)
    parts = images.split(micro_batch) if micro_batch else [images]
    with torch.inference_mode(), _autocast(device):
        return torch.cat([enc.encode_image(p.to(device, non_blocking=True)).float().cpu() for p in parts]).numpy()


def extract_split(cfg: C.Config, job: SplitJob, encoders: dict[str, Encoder], device: str,
                  progress: bool = True) -> list[Path]:
    name, split = C.split_ref(job.ref)
    ds_spec = cfg.dataset(name).identity()
    data = open_split(ds_spec, split)
    x = cfg.extract
    fraction = x.fraction_of(job.ref)
    subset = subset_indices(len(data.dataset), fraction, x.subset_seed)
    if job.items is not None:
        subset = subset[job.items[0]:job.items[1]]
    todo = job.targets
    views = list(dict.fromkeys(repr(encoders[n].transform) for n in todo))
    view_of = {n: views.index(repr(encoders[n].transform)) for n in todo}
    transforms = [next(encoders[n].transform for n in todo if view_of[n] == i) for i in range(len(views))]
    writers = {}
    try:
        for n, path in todo.items():
            enc = encoders[n]
            attrs = {"encoder": n, "model": cfg.encoder(n).model, "pretrained": cfg.encoder(n).pretrained,
                     "identity": cfg.encoder(n).identity(), "dataset": name, "split": split,
                     "dataset_identity": ds_spec, "fraction": fraction, "seed": x.subset_seed,
                     "split_size": len(data.dataset), "classnames": data.classnames,
                     "preprocess": enc.preprocess, "versions": versions(),
                     **({"shard_items": list(job.items)} if job.items else {})}
            writers[n] = store.FeatureWriter(path, enc.dim, attrs, x.batch_size, len(subset))
        start = min(w.items_done for w in writers.values())
        loader = DataLoader(_Decoded(data.dataset, subset[start:], transforms), batch_size=x.batch_size,
                            num_workers=x.num_workers, collate_fn=_collate)
        bar = tqdm(total=len(subset), initial=start, unit="img", disable=not progress,
                   desc=f"extract {job.ref} [{', '.join(todo)}]")
        pos = start
        for n_items, index, labels, batch_views, bad in loader:
            if bad and x.on_bad_image == "fail":
                raise PipelineError(f"unreadable image {bad[0][0]} in {job.ref}: {bad[0][1]} "
                                    f"(set on_bad_image = 'skip' to skip it for every encoder)")
            for n, w in writers.items():
                if w.items_done > pos:      # this encoder got past here before an interruption
                    continue
                feats = _encode(encoders[n], batch_views[view_of[n]] if len(index) else None,
                                cfg.encoder(n).micro_batch, device)
                w.append(feats, index, labels, n_items, [b[0] for b in bad])
            pos += n_items
            bar.update(n_items)
        bar.close()
        done = []
        for n, w in writers.items():
            bad_count = len(json.loads(w.file.attrs["bad_items"]))
            if w.rows_done == 0:
                raise PipelineError(f"no readable image in {job.ref}; nothing was written")
            w.file.attrs["bad_count"] = bad_count
            done.append(catalog.finish(w))
        return done
    finally:
        for w in writers.values():
            w.close()


def extract_text(cfg: C.Config, clip: Encoder, device: str) -> list[Path]:
    """Per-prompt text embeddings of each dataset's class prompts and of the class-free set."""
    jobs = []
    for name in dict.fromkeys(C.split_ref(r)[0] for r in cfg.extract.splits):
        path = C.class_text_path(cfg, name)
        if not path.exists():
            split = open_split(cfg.dataset(name).identity(), _first_split(cfg, name))
            prompts, cop = class_prompts(load_templates(cfg.clip.templates, C.templates_file(cfg)), split.classnames)
            jobs.append((path, prompts, cop, split.classnames, {"dataset": name, "templates": cfg.clip.templates,
                                                               "class_groups": split.class_groups}))
    path = C.classfree_text_path(cfg)
    if not path.exists():
        prompts = load_classfree(C.classfree_file(cfg))
        jobs.append((path, prompts, -np.ones(len(prompts), np.int64), [], {"prompt_set": "classfree"}))
    for path, prompts, cop, classnames, attrs in jobs:
        chunks = []
        for i in range(0, len(prompts), cfg.clip.batch_size):
            with torch.inference_mode(), _autocast(device):
                chunks.append(clip.encode_text(prompts[i:i + cfg.clip.batch_size], device).float().cpu())
        emb = torch.cat(chunks).numpy()
        store.write_text(path, store.TextEmbeddings(emb, prompts, cop, classnames, {
            **attrs, "clip": cfg.clip.name, "identity": cfg.clip.identity(), "versions": versions()}))
    return [j[0] for j in jobs]


def _first_split(cfg: C.Config, dataset: str) -> str:
    return next(C.split_ref(r)[1] for r in cfg.extract.splits if C.split_ref(r)[0] == dataset)


def run_extract(cfg: C.Config, progress: bool = True) -> dict[str, list[Path]]:
    """Extract every configured split with CLIP and every encoder; finished files are skipped.

    With `[extract] scheduler`, splits are sharded over the dask cluster's workers (extract/shards.py).
    """
    device = resolve_device(cfg.extract.device)
    names = [cfg.clip.name] + [e.name for e in cfg.encoders]
    jobs = []
    for ref in cfg.extract.splits:
        targets = {n: C.feature_path(cfg, n, ref) for n in names}
        targets = {n: p for n, p in targets.items() if not p.exists()}
        if targets:
            jobs.append(SplitJob(ref, targets))
    text_missing = any(not C.class_text_path(cfg, C.split_ref(r)[0]).exists() for r in cfg.extract.splits) \
        or not C.classfree_text_path(cfg).exists()
    written: dict[str, list[Path]] = {"features": [], "text": []}
    if cfg.extract.scheduler and jobs:
        from .shards import run_sharded
        written["features"] = run_sharded(cfg, jobs, cfg.extract.scheduler)
        jobs = []
    need = {n for j in jobs for n in j.targets} | ({cfg.clip.name} if text_missing else set())
    encoders = {n: build_encoder(cfg.encoder(n).identity(), device) for n in names if n in need}
    for job in jobs:
        written["features"] += extract_split(cfg, job, encoders, device, progress)
    if text_missing:
        written["text"] = extract_text(cfg, encoders[cfg.clip.name], device)
    return written
