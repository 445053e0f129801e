"""What `pipeline cache ls | info | verify | rm | import` do, on paths only (no torch model code)."""
from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from . import store
from .errors import PipelineError


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in Path(cache_dir).glob("*/*") if p.suffix in (".h5", ".partial"))


def sha256_rows(data: h5py.Dataset) -> str:
    """Checksum of a dataset's bytes, block by block (memory stays bounded)."""
    h = hashlib.sha256()
    step = max(1, (64 << 20) // max(1, data.dtype.itemsize * int(np.prod(data.shape[1:]))))
    for i in range(0, data.shape[0], step):
        h.update(np.ascontiguousarray(data[i:i + step]).tobytes())
    return h.hexdigest()


def features_sha256(path: Path) -> str:
    with h5py.File(path, "r") as f:
        return sha256_rows(f["features"])


def describe(path: Path) -> dict:
    """One line's worth of facts about a cache file."""
    row = {"file": path.name, "kind": path.parent.name, "bytes": path.stat().st_size}
    try:
        attrs = store.read_attrs(path)
    except OSError:
        return {**row, "state": "unreadable"}
    shape = None
    with h5py.File(path, "r") as f:
        shape = f["features"].shape if "features" in f else f["embeddings"].shape
    state = "partial" if path.suffix == ".partial" else ("complete" if attrs.get("complete") else "incomplete")
    return {**row, "state": state, "rows": int(shape[0]), "dim": int(shape[1]),
            "encoder": attrs.get("encoder", attrs.get("clip", "")),
            "dataset": attrs.get("dataset", attrs.get("prompt_set", "")), "split": attrs.get("split", "")}


def verify(path: Path) -> list[str]:
    """Problems found in one file ([] when it is sound)."""
    if path.suffix == ".partial":
        return ["interrupted extraction (.partial): run `pipeline extract` to resume it"]
    try:
        with store.open_complete(path) as f:
            attrs = dict(f.attrs)
            if "features" not in f:
                return []
            n = f["features"].shape[0]
            problems = []
            if int(attrs.get("rows_done", -1)) != n:
                problems.append(f"rows_done {attrs.get('rows_done')} != {n} rows")
            index = f["index"][:]
            if len(index) != n or len(f["labels"]) != n:
                problems.append("index/labels length differs from features")
            if np.any(np.diff(index) <= 0):
                problems.append("index is not strictly increasing")
    except PipelineError as e:
        return [str(e)]
    stored = attrs.get("features_sha256")  # text files carry none: they are written whole
    if stored is not None and features_sha256(path) != stored:
        problems.append("checksum mismatch: the feature rows changed since they were written")
    try:
        store.read_features(path)
    except PipelineError as e:
        problems.append(str(e))
    return problems


def select(cache_dir: Path, patterns: list[str]) -> list[Path]:
    """Cache files whose name matches any glob pattern (a bare name matches itself)."""
    files = cache_files(cache_dir)
    return [p for p in files if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]


def load_array(path: Path, key: str = "features") -> np.ndarray:
    """An array from .npy, .h5 (dataset `key`) or .pt (a tensor; loaded with weights_only=True)."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            if key not in f:
                raise PipelineError(f"{path} has no dataset {key!r} (has: {', '.join(f)})")
            return f[key][:]
    if path.suffix in (".pt", ".pth"):
        import torch
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            obj = obj.get(key)
        if not isinstance(obj, torch.Tensor):
            raise PipelineError(f"{path} holds no tensor (or no {key!r} entry of one)")
        return obj.float().numpy()
    raise PipelineError(f"cannot import {path.suffix} files: use .npy, .h5 or .pt")


def read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]


def import_features(target: Path, features: np.ndarray, labels: np.ndarray | None,
                    index: np.ndarray | None, attrs: dict) -> Path:
    """Write features computed elsewhere as a complete cache file (a whole split, rows by index)."""
    if features.ndim != 2 or len(features) == 0:
        raise PipelineError(f"features must be a non-empty 2-D array (N, D), got shape {features.shape}")
    n = len(features)
    index = np.arange(n, dtype=np.int64) if index is None else np.asarray(index, np.int64)
    labels = -np.ones(n, np.int64) if labels is None else np.asarray(labels, np.int64)
    if len(index) != n or len(labels) != n:
        raise PipelineError(f"features have {n} rows but index has {len(index)} and labels {len(labels)}")
    if len(np.unique(index)) != n:
        raise PipelineError("index holds duplicate dataset indices")
    order = np.argsort(index, kind="stable")
    writer = store.FeatureWriter(target, features.shape[1], {**attrs, "fraction": 1.0, "seed": 0,
                                 "split_size": int(index.max()) + 1}, batch_size=n, expected_rows=n)
    try:
        writer.append(features[order].astype(np.float32), index[order], labels[order], n)
        return finish(writer)
    finally:
        writer.close()


def finish(writer: store.FeatureWriter) -> Path:
    """Complete a file with the checksum that `verify` checks."""
    return writer.finish({"features_sha256": sha256_rows(writer.file["features"])})


def _decoded(value):
    """Structured attributes are stored as JSON strings; show them as structures."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def info(path: Path) -> str:
    attrs = store.read_attrs(path)
    return json.dumps({k: _decoded(v) for k, v in attrs.items()}, indent=1, default=str)
