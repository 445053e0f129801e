"""One fit run: resolved config in, `maps.safetensors` + `run.json` out, from cached tensors only.

A run is named by the hash of its resolved config; it is written to a temporary folder and renamed
when finished, so an interrupted run leaves nothing that looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from zoomshot.cache import store
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.subsets import rows_of_subset

from .methods import fit_method

MAPS_FILE, RUN_FILE = "maps.safetensors", "run.json"


def run_name(spec: dict) -> str:
    """Hash of everything that changes the numbers (not where files live, not the device)."""
    ident = {k: v for k, v in spec.items() if k not in ("paths", "device")}
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def is_finished(run_dir: Path) -> bool:
    return (run_dir / RUN_FILE).exists() and (run_dir / MAPS_FILE).exists()


def load_pairs(pairs: list[dict], fraction: float) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Row-aligned (source, CLIP) features of the nested `fraction` of each training split."""
    s_parts, t_parts, provenance = [], [], []
    for p in pairs:
        src_path, clip_path = Path(p["source"]), Path(p["clip"])
        src_attrs = store.read_attrs_complete(src_path)
        extracted = float(src_attrs["fraction"])
        if fraction > extracted + 1e-12:
            raise PipelineError(f"fit fraction {fraction} is larger than the extracted fraction {extracted} "
                                f"of {src_path.name}: extract a larger fraction or fit a smaller one")
        with store.open_complete(src_path) as f:
            rows = rows_of_subset(f["index"][:], int(src_attrs["split_size"]), fraction, int(src_attrs["seed"]))
        src, clip = store.read_features(src_path, rows), store.read_features(clip_path, rows)
        if not np.array_equal(src.index, clip.index):
            raise PipelineError(f"rows of {src_path.name} and {clip_path.name} do not align (different "
                                f"subsets or skipped images): extract them together again")
        s_parts.append(src.features)
        t_parts.append(clip.features)
        provenance.append({"source": src_path.name, "clip": clip_path.name, "rows": int(len(rows))})
    dims = {a.shape[1] for a in s_parts}
    if len(dims) != 1:
        raise PipelineError(f"training splits of one run have different source widths {sorted(dims)}")
    return np.concatenate(s_parts), np.concatenate(t_parts), provenance


def execute(spec: dict) -> dict:
    """Run one fit from its resolved spec; returns a one-line status dict. Never raises for a bad run
    so a sweep goes on with the others; the error is in the status."""
    run_dir = Path(spec["paths"]["runs_dir"]) / spec["name"]
    if is_finished(run_dir):
        return {"name": spec["name"], "status": "skipped"}
    tmp = run_dir.with_name(f".{spec['name']}.tmp-{os.getpid()}")
    try:
        t0 = time.perf_counter()
        s, t, provenance = load_pairs(spec["pairs"], spec["fraction"])
        u = None
        if spec.get("classfree"):
            u = torch.from_numpy(store.read_text(Path(spec["classfree"])).embeddings)
        maps, history = fit_method(spec["method"], torch.from_numpy(s), torch.from_numpy(t), u,
                                   dict(spec["params"]), spec["seed"], spec["device"])
        wall = time.perf_counter() - t0
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        maps.save(tmp / MAPS_FILE, {"run": spec["name"], "method": spec["method"]})
        record = {**{k: v for k, v in spec.items() if k != "paths"}, "train_files": provenance,
                  "rows": int(len(s)), "history": history, "wall_time_s": round(wall, 4),
                  "versions": {"torch": torch.__version__, "numpy": np.__version__,
                               "project": version("zoomshot-pipeline")},
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / RUN_FILE).write_text(json.dumps(record, indent=1, default=str))
        shutil.rmtree(run_dir, ignore_errors=True)
        os.replace(tmp, run_dir)
        return {"name": spec["name"], "status": "done", "wall_time_s": round(wall, 3)}
    except Exception as e:  # one failing run is reported, the sweep goes on
        shutil.rmtree(tmp, ignore_errors=True)
        msg = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
        return {"name": spec["name"], "status": "failed", "error": msg}
