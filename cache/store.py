"""The feature store: one HDF5 file per (dataset, split, encoder, settings), written through a
`.partial` file that is resumable and renamed atomically when complete (DESIGN.md section 3).

Handles are never shared across processes: every function takes a path and opens it itself.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import PipelineError

SCHEMA_VERSION = 1
CHUNK_BYTES = 1 << 20


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _attr(value: Any) -> Any:
    """HDF5 attributes hold scalars and strings; anything structured is stored as JSON."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_schema(path: Path, attrs: h5py.AttributeManager) -> None:
    found = attrs.get("schema_version")
    if found != SCHEMA_VERSION:
        raise PipelineError(
            f"{path} was written with cache schema {found}, this version reads schema {SCHEMA_VERSION}: "
            f"remove it (`pipeline cache rm {path.name}`) and extract again")


class FeatureWriter:
    """Appends feature rows to `<target>.partial`; resumes from `rows_done`; `finish()` renames.

    Progress attributes (`rows_done`, `items_done`) are written after the rows they count and flushed,
    so a kill at any point leaves a file whose counted rows are exact; rows past `rows_done` are
    dropped on resume. A resumed file ends bit-identical to an uninterrupted one when the caller
    replays the same batches, which `batch_size` (stored) guarantees.
    """

    def __init__(self, target: Path, dim: int, attrs: dict, batch_size: int, expected_rows: int = 0):
        self.expected_rows = expected_rows   # sizes chunks of small files; rows may still grow past it
        self.target = Path(target)
        self.partial = partial_path(self.target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.file = self._open_or_resume(attrs, batch_size)

    def _open_or_resume(self, attrs: dict, batch_size: int) -> h5py.File:
        if self.partial.exists():
            try:
                f = h5py.File(self.partial, "r+")
                ok = (f.attrs.get("schema_version") == SCHEMA_VERSION
                      and f.attrs.get("batch_size") == batch_size
                      and f["features"].shape[1] == self.dim)
                if ok:
                    self._truncate(f, int(f.attrs["rows_done"]))
                    return f
                f.close()
            except (OSError, KeyError):
                pass  # a partial torn by a kill mid-flush: start it again
            self.partial.unlink()
        f = h5py.File(self.partial, "w")
        rows_per_chunk = max(1, CHUNK_BYTES // (self.dim * 2))
        if self.expected_rows:
            rows_per_chunk = min(rows_per_chunk, self.expected_rows)
        f.create_dataset("features", shape=(0, self.dim), maxshape=(None, self.dim), dtype="float16",
                         chunks=(rows_per_chunk, self.dim))
        for name in ("index", "labels"):
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="int64",
                             chunks=(rows_per_chunk,))
        for k, v in attrs.items():
            f.attrs[k] = _attr(v)
        f.attrs.update({"schema_version": SCHEMA_VERSION, "dim": self.dim, "batch_size": batch_size,
                        "rows_done": 0, "items_done": 0, "complete": False, "created": _now(),
                        "bad_items": "[]"})
        f.flush()
        return f

    @staticmethod
    def _truncate(f: h5py.File, rows: int) -> None:
        for name in ("features", "index", "labels"):
            if f[name].shape[0] != rows:
                f[name].resize(rows, axis=0)

    @property
    def rows_done(self) -> int:
        return int(self.file.attrs["rows_done"])

    @property
    def items_done(self) -> int:
        """Subset items consumed, including skipped bad ones: where extraction resumes."""
        return int(self.file.attrs["items_done"])

    def append(self, features: np.ndarray, index: np.ndarray, labels: np.ndarray, items: int,
               bad: list[int] | None = None) -> None:
        """Write one batch: `items` subset items were consumed, `len(features)` of them kept."""
        if not np.isfinite(features).all():
            raise PipelineError(f"non-finite features produced for {self.target.name}: "
                                f"check the encoder weights and the input normalisation")
        n0, n = self.rows_done, len(features)
        f = self.file
        for name, data in (("features", features.astype(np.float16)), ("index", index), ("labels", labels)):
            f[name].resize(n0 + n, axis=0)
            f[name][n0:n0 + n] = data
        f.flush()
        if bad:
            f.attrs["bad_items"] = json.dumps(json.loads(f.attrs["bad_items"]) + list(map(int, bad)))
        f.attrs["rows_done"] = n0 + n
        f.attrs["items_done"] = self.items_done + items
        f.flush()

    def finish(self, extra_attrs: dict | None = None) -> Path:
        for k, v in (extra_attrs or {}).items():
            self.file.attrs[k] = _attr(v)
        self.file.attrs["complete"] = True
        self.file.close()
        os.replace(self.partial, self.target)
        return self.target

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


@dataclass
class FeatureFile:
    """A complete feature file read into memory (float32), with its provenance."""
    path: Path
    features: np.ndarray
    index: np.ndarray
    labels: np.ndarray
    attrs: dict


def _attrs_dict(attrs: h5py.AttributeManager) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}


def read_attrs(path: Path) -> dict:
    """Provenance of any cache file, finished or not (for `pipeline cache info`)."""
    with h5py.File(path, "r") as f:
        return _attrs_dict(f.attrs)


def read_attrs_complete(path: Path) -> dict:
    with open_complete(path) as f:
        return _attrs_dict(f.attrs)


def open_complete(path: Path) -> h5py.File:
    """Open a finished file for reading; the caller closes it (use as a context manager)."""
    path = Path(path)
    if not path.exists():
        hint = " (an interrupted extraction: run `pipeline extract` again to resume it)" \
            if partial_path(path).exists() else " (run `pipeline extract` first)"
        raise PipelineError(f"cache file {path} does not exist{hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PipelineError(f"cannot read cache file {path}: {e}; remove it and extract again") from None
    check_schema(path, f.attrs)
    if not f.attrs.get("complete", False):
        f.close()
        raise PipelineError(f"cache file {path} is not complete; run `pipeline extract` again")
    return f


def read_features(path: Path, rows: np.ndarray | None = None) -> FeatureFile:
    """Whole file or the given (ascending) rows, as float32; refuses NaN/Inf."""
    with open_complete(path) as f:
        sel = slice(None) if rows is None else np.asarray(rows)
        feats = f["features"][sel].astype(np.float32)
        index, labels = f["index"][sel], f["labels"][sel]
        attrs = _attrs_dict(f.attrs)
    if not np.isfinite(feats).all():
        raise PipelineError(f"{path} holds NaN or Inf features; remove it (`pipeline cache rm`) "
                            f"and extract again, or fix the file you imported")
    return FeatureFile(Path(path), feats, index, labels, attrs)


@dataclass
class TextEmbeddings:
    """Per-prompt CLIP text embeddings; class embeddings are derived at evaluation time."""
    embeddings: np.ndarray        # (K, d) float32
    prompts: list[str]
    class_of_prompt: np.ndarray   # (K,) int64, -1 for class-free prompt sets
    classnames: list[str]
    attrs: dict


def write_text(path: Path, emb: TextEmbeddings) -> Path:
    """Text files are small: written whole to `.partial`, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    if not np.isfinite(emb.embeddings).all():
        raise PipelineError(f"non-finite text embeddings for {path.name}")
    str_dt = h5py.string_dtype()
    with h5py.File(tmp, "w") as f:
        f.create_dataset("embeddings", data=emb.embeddings.astype(np.float32))
        f.create_dataset("prompts", data=np.array(emb.prompts, dtype=object), dtype=str_dt)
        f.create_dataset("class_of_prompt", data=emb.class_of_prompt.astype(np.int64))
        f.create_dataset("classnames", data=np.array(emb.classnames, dtype=object), dtype=str_dt)
        for k, v in emb.attrs.items():
            f.attrs[k] = _attr(v)
        f.attrs.update({"schema_version": SCHEMA_VERSION, "dim": emb.embeddings.shape[1],
                        "created": _now(), "complete": True})
    os.replace(tmp, path)
    return path


def read_text(path: Path) -> TextEmbeddings:
    with open_complete(path) as f:
        emb = TextEmbeddings(
            embeddings=f["embeddings"][:].astype(np.float32),
            prompts=[s.decode() if isinstance(s, bytes) else s for s in f["prompts"][:]],
            class_of_prompt=f["class_of_prompt"][:],
            classnames=[s.decode() if isinstance(s, bytes) else s for s in f["classnames"][:]],
            attrs=_attrs_dict(f.attrs))
    if not np.isfinite(emb.embeddings).all():
        raise PipelineError(f"{path} holds NaN or Inf text embeddings; remove it and extract again")
    return emb
