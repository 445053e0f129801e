"""Stage 3: score cached test features of every finished run (and CLIP itself, the ceiling) against
cached class-prompt embeddings; one CLIP_benchmark-style JSON per (run, dataset).

Reads only the cache and saved maps: never an image, never an encoder, never `fit` internals.
Test sets stream in chunks of rows, so memory stays bounded whatever their size.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file

from zoomshot.cache import store
from zoomshot.cache.errors import PipelineError
from zoomshot.cli import config as C

from .metrics import MetricAccumulator, class_embeddings, zero_shot_logits

TASK = "zeroshot_classification"


def load_mapping(maps_file: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """h as a function on raw source features; the variance scales are undone here."""
    t = load_file(str(maps_file))
    w, b = t["h.weight"], t["h.bias"]
    cs, cc = float(t["scale_source"]), float(t["scale_clip"])
    return lambda s: ((s * cs) @ w.T + b) / cc


def aligned_chunks(paths: list[Path], chunk_rows: int) -> Iterator[list[store.FeatureFile]]:
    """Aligned row chunks of files that hold the same rows (a student's test file and CLIP's)."""
    files = [store.open_complete(p) for p in paths]
    try:
        n = files[0]["features"].shape[0]
        for f, p in zip(files[1:], paths[1:]):
            if f["features"].shape[0] != n or not np.array_equal(f["index"][:], files[0]["index"][:]):
                raise PipelineError(f"{p.name} and {paths[0].name} hold different rows: extract them together")
        for i in range(0, n, chunk_rows):
            out = []
            for f, p in zip(files, paths):
                feats = f["features"][i:i + chunk_rows].astype(np.float32)
                if not np.isfinite(feats).all():
                    raise PipelineError(f"{p} holds NaN or Inf features; remove it and extract again")
                out.append(store.FeatureFile(p, feats, f["index"][i:i + chunk_rows], f["labels"][i:i + chunk_rows], {}))
            yield out
    finally:
        for f in files:
            f.close()


def score(student: Path, teacher: Path, class_emb: torch.Tensor,
          mapping: Callable[[torch.Tensor], torch.Tensor] | None, chunk_rows: int, per_class: bool = False,
          groups: dict[str, list[int]] | None = None) -> dict:
    """Metrics of `mapping(student features)` against the classes, with CLIP (`teacher`) agreement."""
    acc = MetricAccumulator(class_emb.shape[0])
    paths = [student] if student == teacher else [student, teacher]
    for chunk in aligned_chunks(paths, chunk_rows):
        s = torch.from_numpy(chunk[0].features)
        if mapping is not None:
            s = mapping(s)
        if mapping is not None and s.shape[1] != class_emb.shape[1]:
            raise PipelineError(f"mapped width {s.shape[1]} != CLIP text width {class_emb.shape[1]}")
        teacher_logits = zero_shot_logits(torch.from_numpy(chunk[-1].features), class_emb)
        acc.update(zero_shot_logits(s, class_emb), torch.from_numpy(chunk[0].labels), teacher_logits)
    return acc.compute(per_class, groups)


@dataclass
class Classes:
    """A dataset's zero-shot classifier, from its class-prompt text file."""
    emb: torch.Tensor                 # (C, d) class embeddings
    names: list[str]
    groups: dict[str, list[int]]      # named class sets scored on their own too (`acc1_<name>`)


def load_classes(path: Path) -> Classes:
    text = store.read_text(path)
    emb = class_embeddings(torch.from_numpy(text.embeddings), torch.from_numpy(text.class_of_prompt),
                           len(text.classnames))
    return Classes(emb, text.classnames, json.loads(text.attrs.get("class_groups", "{}")))


def write_result(result: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, path)
    return path


def run_fields(record: dict, run_dir: Path) -> dict:
    """The provenance of a fitted run that every result of it carries."""
    return {"model": record["encoder"], "pretrained": record["encoder_identity"].get("pretrained", ""),
            "run": run_dir.name, "encoder": record["encoder"],
            "loss_weights": {k: v for k, v in record["params"].items() if k.startswith("w_")},
            "params": record["params"], "fraction": record["fraction"], "epochs": record["params"].get("epochs"),
            "seed": record["seed"], "train_data": record["train"], "rows": record["rows"],
            "versions": record.get("versions", {})}


def finished_runs(runs_dir: Path, names: list[str]) -> list[Path]:
    found = sorted(p.parent for p in runs_dir.glob("*/run.json")
                   if (p.parent / "maps.safetensors").exists() and not p.parent.name.startswith("."))
    if names:
        missing = set(names) - {p.name for p in found}
        if missing:
            raise PipelineError(f"no finished run named {', '.join(sorted(missing))} under {runs_dir}")
        found = [p for p in found if p.name in names]
    return found


def run_evaluate(cfg: C.Config, progress: Callable[[str], None] = print) -> list[Path]:
    """Every finished run (or the named ones) on every configured test split, plus the CLIP row."""
    runs = finished_runs(cfg.path("runs_dir"), cfg.evaluate.runs)
    out_dir, written = cfg.path("results_dir"), []
    for ref in cfg.evaluate.test:
        dataset, split = C.split_ref(ref)
        classes = load_classes(C.class_text_path(cfg, dataset))
        class_emb, groups = classes.emb, classes.groups
        clip_file = C.feature_path(cfg, cfg.clip.name, ref)
        clip_metrics = score(clip_file, clip_file, class_emb, None, cfg.evaluate.chunk_rows, cfg.evaluate.per_class,
                             groups)
        base = {"dataset": dataset, "split": split, "task": TASK, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        written.append(write_result({**base, "model": cfg.clip.model, "pretrained": cfg.clip.pretrained,
                               "metrics": clip_metrics, "encoder": cfg.clip.name, "method": "clip",
                               "variant": "clip", "run": "clip", "cache_keys": [clip_file.name]},
                              out_dir / "clip" / f"{dataset}-{split}.json"))
        for run_dir in runs:
            record = json.loads((run_dir / "run.json").read_text())
            ident = record["encoder_identity"]
            try:
                test_file = C.feature_path(cfg, record["encoder"], ref)
                if cfg.encoder(record["encoder"]).identity() != ident:
                    raise PipelineError("the config's encoder settings differ from the ones it was fitted on")
                metrics = score(test_file, clip_file, class_emb, load_mapping(run_dir / "maps.safetensors"),
                                cfg.evaluate.chunk_rows, cfg.evaluate.per_class, groups)
            except PipelineError as e:
                progress(f"skip run {run_dir.name} ({record['encoder']}, {record['variant']}) on {ref}: {e}")
                continue
            metrics["clip_acc1"] = clip_metrics["acc1"]
            result = {**base, **run_fields(record, run_dir), "metrics": metrics, "method": record["method"],
                      "variant": record["variant"],
                      "cache_keys": record["cache_keys"] + [test_file.name, clip_file.name]}
            written.append(write_result(result, out_dir / run_dir.name / f"{dataset}-{split}.json"))
    return written


def _head_rows(path: Path, n: int) -> np.ndarray:
    with store.open_complete(path) as f:
        return f["features"][:n].astype(np.float32)


def projection_points(cfg: C.Config, results: list[dict], max_rows: int = 1500) -> dict[str, dict[str, np.ndarray]]:
    """Per test dataset: CLIP image and text features, the best run of each encoder mapped into CLIP's
    space, and CLIP's training images, for the modality-gap plot. Missing cache files are left out."""
    out: dict[str, dict[str, np.ndarray]] = {}
    train_ref = cfg.fit.train[0].split("+")[0] if cfg.fit.train else None
    for ref in cfg.evaluate.test:
        dataset, _ = C.split_ref(ref)
        try:
            points = {"CLIP image (test)": _head_rows(C.feature_path(cfg, cfg.clip.name, ref), max_rows),
                      "CLIP text (classes)": load_classes(C.class_text_path(cfg, dataset)).emb.numpy()}
            if train_ref:
                points["CLIP image (train)"] = _head_rows(C.feature_path(cfg, cfg.clip.name, train_ref), max_rows)
        except PipelineError:
            continue
        mine = [r for r in results if r["dataset"] == dataset and r["method"] != "clip"]
        best: dict[str, dict] = {}
        for r in mine:
            if r["encoder"] not in best or r["metrics"]["acc1"] > best[r["encoder"]]["metrics"]["acc1"]:
                best[r["encoder"]] = r
        for enc, r in best.items():
            maps = cfg.path("runs_dir") / r["run"] / "maps.safetensors"
            try:
                feats = _head_rows(C.feature_path(cfg, enc, ref), max_rows)
            except PipelineError:
                continue
            if maps.exists():
                points[f"{enc} mapped ({r['variant']})"] = load_mapping(maps)(torch.from_numpy(feats)).numpy()
        out[dataset] = points
    return out
