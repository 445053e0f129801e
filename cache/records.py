"""The data record: what extraction saw of a dataset's files, kept in the cache, so that the cache
travels without the images and later commands never walk the image tree (DESIGN.md section 3).

    <cache_dir>/data/<dataset>.json
    {"schema": 1, "dataset": "inet", "root": "/data/imagenet",          # the root as configured, for people
     "splits": {"train": {"value": "tree-sha256:...", "state": {...}, "taken_ns": ...}},
     "content": {"train": {"value": "content-sha256:...", ...}},           # with [extract] content_hash
     "classes": {"value": {"folders": [...]}, "state": {...}, "taken_ns": ...}}

Each entry holds a value that is costly to measure (a split's listing fingerprint, a tree's class
folders) and the cheap state it was measured at: `{path relative to the root: [mtime_ns, size]}` of
every directory (an image added, removed or renamed changes its directory's mtime) and of the files
that change in place (tar shards, `classnames.txt`). A command

* without the root (a copied cache, moved images) takes the recorded value;
* with the root stats the recorded paths (one stat per directory, no listing): unchanged, it takes
  the recorded value; changed (a copied tree has new mtimes) or too recent to tell, it measures the
  tree again, and re-records the state when the value is the same. A changed value is used as it is
  (a new key: the files of the old data are not found) and only extraction records it.

Extraction always measures and records (`fresh`). Nothing in a record is part of a key but the value.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import atomic, keys, locks

RECORD_DIR = "data"
SCHEMA = 1
#: An mtime this close to when the state was taken may hide a later change in the same clock tick
#: (as git's "racily clean" entries): such an entry is measured again.
RACY_NS = 2_000_000_000

Measure = Callable[[Path], tuple[Any, list[str]]]


def record_path(cache_dir: Path, dataset: str) -> Path:
    return Path(cache_dir) / RECORD_DIR / f"{keys.slug(dataset)}.json"


def _stat(root: Path, rels: list[str]) -> dict[str, list[int]]:
    out = {}
    for rel in rels:
        st = os.stat(root / rel)
        out[rel] = [st.st_mtime_ns, st.st_size]
    return out


def _unchanged(root: Path, entry: dict) -> bool:
    """Whether every recorded path still has its recorded mtime and size, each old enough to trust."""
    for rel, (mtime, size) in entry["state"].items():
        try:
            st = os.stat(root / rel)
        except OSError:
            return False
        if (st.st_mtime_ns, st.st_size) != (mtime, size) or mtime >= entry["taken_ns"] - RACY_NS:
            return False
    return True


def _split_tree(split: str, content: bool) -> Measure:
    def measure(root: Path) -> tuple[str, list[str]]:
        folder = keys.data_folder(str(root), split)
        state = keys.tree_state(folder)
        paths = [d for d, _, _ in state] + [os.path.join(d, f) for d, _, shards in state for f, *_ in shards]
        return keys.tree_fingerprint(folder, state, content), [os.path.relpath(p, root) for p in paths]

    return measure


def _class_folders(root: Path) -> tuple[dict, list[str]]:
    names = root / "classnames.txt"
    value = {
        "folders": keys.folder_names(str(root)),
        **({"classnames_txt": "sha256:" + keys.file_checksum(names)} if names.is_file() else {}),
    }
    tops = [f for f in value["folders"] if "/" not in f]
    return value, [".", *tops, *(["classnames.txt"] if names.is_file() else [])]


class DataRecord:
    """The record of one dataset (its `root` as configured) in one cache."""

    def __init__(self, path: Path, dataset: str, root: str, content_hash: bool = False):
        self.path, self.dataset, self.root, self.content_hash = Path(path), dataset, root, content_hash

    def _split_entry(self, split: str) -> tuple[str, str]:
        """Where a split's fingerprint is recorded: by listing, or with `content_hash` by the files' bytes
        (each kind its own entry, so neither is ever taken for the other)."""
        return ("content" if self.content_hash else "splits", split)

    def split_data(self, split: str, fresh: bool = False) -> str:
        """The fingerprint of a split's files: "" for a dataset without files, "missing" for a root that
        is absent here and was never recorded."""
        if not self.root:
            return ""
        return self._value(self._split_entry(split), _split_tree(split, self.content_hash), fresh) or "missing"

    def recorded_split(self, split: str) -> str | None:
        """The split's fingerprint as the last extraction recorded it (None: never), without measuring."""
        entry = self._entry(self._split_entry(split))
        return entry["value"] if entry else None

    def classes(self, fresh: bool = False) -> dict:
        """What of the files names the classes: the folders one and two levels under the root (an
        ImageFolder's class names) and a `classnames.txt` at the root (a webdataset's)."""
        if not self.root:
            return {"folders": []}
        return self._value(("classes",), _class_folders, fresh) or {"folders": []}

    def _entry(self, where: tuple[str, ...]) -> dict | None:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        for k in where:
            record = record.get(k) if isinstance(record, dict) else None
        return record if isinstance(record, dict) and {"value", "state", "taken_ns"} <= record.keys() else None

    def _value(self, where: tuple[str, ...], measure: Measure, fresh: bool) -> Any:
        root = Path(self.root)
        entry = self._entry(where)
        if not root.is_dir():
            return entry["value"] if entry else None
        if entry and not fresh and _unchanged(root, entry):
            return entry["value"]
        taken = time.time_ns()
        value, rels = measure(root)
        if fresh or (entry and entry["value"] == value):
            self._record(where, {"value": value, "state": _stat(root, rels), "taken_ns": taken}, must=fresh)
        return value

    def _record(self, where: tuple[str, ...], entry: dict, must: bool) -> None:
        """Write one entry (under the record's lock: several extractions may record one dataset). Only
        extraction must: a command refreshing the state in a read-only copy of the cache goes on."""
        try:
            with locks.holding([self.path]):
                try:
                    record = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    record = {}
                record.update({"schema": SCHEMA, "dataset": self.dataset, "root": self.root})
                node = record
                for k in where[:-1]:
                    node = node.setdefault(k, {})
                node[where[-1]] = entry
                atomic.write_json(self.path, record)
        except OSError:
            if must:
                raise
