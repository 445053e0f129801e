"""What `pipeline cache ls | info | verify | rm | import` do, on paths only (no torch model code)."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import h5py
import numpy as np

from . import locks, store
from .errors import PipelineError


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in Path(cache_dir).glob("*/*") if p.suffix in (".h5", ".partial"))


def in_use(path: Path) -> str | None:
    """ "being written" when an extraction holds the file's write lock, "busy" when another process
    merely has it open (HDF5's lock); None when it is free to read."""
    with locks.trying(path.with_suffix("") if path.suffix == ".partial" else path) as free:
        if not free:
            return "being written"
    try:
        h5py.File(path, "r").close()
    except OSError as e:
        return "busy" if store.locked(e) else None
    return None


def describe(path: Path) -> dict:
    """One line's worth of facts about a cache file."""
    row = {"file": path.name, "kind": path.parent.name, "bytes": path.stat().st_size}
    if state := in_use(path):
        return {**row, "state": state}
    try:
        attrs = store.read_attrs(path)
        with h5py.File(path, "r") as f:
            shape = f["features"].shape if "features" in f else f["embeddings"].shape
    except (PipelineError, OSError, KeyError):
        return {**row, "state": "damaged"}
    state = "partial" if path.suffix == ".partial" else ("complete" if attrs.get("complete") else "incomplete")
    return {**row, "state": state, "rows": int(shape[0]), "dim": int(shape[1])}


def verify(path: Path) -> list[str]:
    """Problems found in one file ([] when it is sound): completeness, schema, shards, row counts,
    order, finiteness, chunk checksums and the whole file's stored checksum."""
    if path.suffix == ".partial":
        return ["interrupted extraction (.partial): run `pipeline extract` to resume it"]
    try:
        with store.open_complete(path) as f:
            attrs = dict(f.attrs)
            if "features" not in f:
                store.read_text(path)  # checks the embeddings' checksum
                return []
            n = f["features"].shape[0]
            problems = []
            if int(attrs.get("rows_done", -1)) != n:
                problems.append(f"rows_done {attrs.get('rows_done')} != {n} rows")
            feats, index, labels = store.read_rows(path, f, slice(None))
            if len(index) != n or len(labels) != n:
                problems.append("index/labels length differs from features")
            if np.any(np.diff(index) <= 0):
                problems.append("index is not strictly increasing")
            if store.sha256_rows(f["features"]) != attrs.get("features_sha256"):
                problems.append("checksum mismatch: the feature rows changed since they were written")
    except PipelineError as e:
        return [str(e)]
    return problems


def problems_of(path: Path) -> list[str]:
    """Cheap checks for `cache info`: a joined file's shards."""
    try:
        return store.shard_problems(path, store.read_attrs(path))
    except PipelineError as e:
        return [str(e)]


def select(cache_dir: Path, patterns: list[str]) -> list[Path]:
    """Cache files whose name matches any glob pattern (a bare name matches itself)."""
    return [p for p in cache_files(cache_dir) if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]


def load_array(path: Path, key: str = "features") -> np.ndarray:
    """An array from .npy, .h5 (dataset `key`) or .pt (a tensor; loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found")
    try:
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
            return obj.numpy() if obj.dtype != torch.bfloat16 else obj.float().numpy()
    except PipelineError:
        raise
    except Exception as e:  # numpy, h5py and torch each raise their own types for a bad file
        raise PipelineError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    raise PipelineError(f"cannot import {path.suffix} files: use .npy, .h5 or .pt")


def read_lines(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError(f"cannot read {path}: {e}") from None


def check_features(features: np.ndarray, what: str) -> np.ndarray:
    """A non-empty (N, D) float matrix, finite and within float16's range (the cache's dtype)."""
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise PipelineError(f"{what} must be a non-empty 2-D array (N, D), got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise PipelineError(f"{what} must hold floating-point numbers, got dtype {features.dtype}")
    store.check_storable(features, what, "fix, drop or scale down those values before importing")
    return features.astype(np.float32)


def check_ints(values: np.ndarray, n: int, what: str, low: int, high: int | None = None) -> np.ndarray:
    """A (n,) integer array with values in [low, high)."""
    if values.ndim != 1 or len(values) != n:
        raise PipelineError(f"{what} must be a 1-D array of {n} values (one per feature row), got shape {values.shape}")
    if not (np.issubdtype(values.dtype, np.integer) or values.dtype == bool):
        raise PipelineError(f"{what} must hold integers, got dtype {values.dtype}")
    values = values.astype(np.int64)
    out = (values < low) | (values >= high if high is not None else False)
    if out.any():
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise PipelineError(f"{what} must lie in {bound}; row {int(np.argmax(out))} holds {values[out][0]}")
    return values


def check_index(index: np.ndarray | None, n: int) -> np.ndarray:
    """The dataset index of each of `n` rows: integers >= 0 in strictly increasing order, as every cache
    file holds its rows (0..n-1 when not given). A descending or repeating index is refused, not sorted:
    the rows it names would pair with other files' rows by position."""
    if index is None:
        return np.arange(n, dtype=np.int64)
    index = check_ints(index, n, "the index", 0)
    if len(down := np.flatnonzero(np.diff(index) <= 0)):
        i = int(down[0]) + 1
        raise PipelineError(
            f"the index must be strictly increasing (rows in dataset order, each index once); row {i} "
            f"holds {index[i]} after {index[i - 1]}: sort the rows and their index together first"
        )
    return index


def import_features(
    target: Path,
    features: np.ndarray,
    labels: np.ndarray | None,
    index: np.ndarray | None,
    attrs: dict,
    num_classes: int | None = None,
) -> Path:
    """Write features computed elsewhere as a complete cache file (a whole split, rows by index).
    Every array is checked first: one clear line for a bad one, and nothing is written."""
    features = check_features(features, "the features")
    n = len(features)
    index = check_index(index, n)
    labels = -np.ones(n, np.int64) if labels is None else check_ints(labels, n, "the labels", -1, num_classes)
    writer = store.FeatureWriter(
        target,
        features.shape[1],
        {**attrs, "fraction": 1.0, "seed": 0, "split_size": int(index.max()) + 1},
        {"imported": True},
        expected_rows=n,
    )
    try:
        writer.append(features, index, labels, n)
        return writer.finish()
    finally:
        writer.close()


def _decoded(value):
    """Structured attributes are stored as JSON strings; show them as structures."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def info(path: Path) -> dict:
    """Every attribute (structures decoded), plus the problems a cheap check finds."""
    attrs = {k: _decoded(v) for k, v in store.read_attrs(path).items()}
    return {**attrs, "problems": problems_of(path)}
