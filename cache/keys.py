"""Content-hash keys: every setting that changes the numbers is in the file name, so a stale file is
never reused. Pure and torch-free: `fit` and `evaluate` locate files without building any model."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

FEATURE_DTYPE = "float16"


def _digest(obj: Any, n: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_checksum(path: str | Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) so repeated lookups are free."""
    st = os.stat(path)
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


#: `pretrained = "assets:weights/tiny_clip.safetensors"` names a file shipped in the package's
#: `extract/assets/`, wherever it is installed; configs and run records keep the short, portable name.
ASSETS_PREFIX = "assets:"


def assets_dir() -> Path:
    """The shipped assets folder, found without importing the (heavy) extraction modules."""
    return Path(importlib.util.find_spec("zoomshot.extract").submodule_search_locations[0]) / "assets"


def weights_location(pretrained: str) -> str:
    """What a `pretrained` value names on disk: `assets:` resolved, anything else unchanged."""
    if pretrained.startswith(ASSETS_PREFIX):
        return str(assets_dir() / pretrained.removeprefix(ASSETS_PREFIX))
    return pretrained


def weights_fingerprint(pretrained: str) -> str:
    """A weights tag stays as it is; a local file or `local-dir:` folder is identified by content."""
    pretrained = weights_location(pretrained)
    if pretrained.startswith("local-dir:"):
        folder = Path(pretrained.removeprefix("local-dir:"))
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            return "dir-sha256:" + _digest({p.name: file_checksum(p) for p in files}, 64)
        return pretrained
    if pretrained and Path(pretrained).is_file():
        return "sha256:" + file_checksum(pretrained)
    return pretrained


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def feature_key(encoder: dict, dataset: dict, split: str, fraction: float, seed: int) -> str:
    """Hash of the encoder spec (with weights fingerprint), dataset spec, split, subset and dtype."""
    enc = {k: v for k, v in encoder.items() if k != "name"}
    enc["pretrained"] = weights_fingerprint(str(encoder.get("pretrained", "")))
    ds = {k: v for k, v in dataset.items() if k != "name"}
    return _digest({"encoder": enc, "dataset": ds, "split": split, "fraction": fraction,
                    "seed": seed, "dtype": FEATURE_DTYPE})


def feature_path(cache_dir: Path, encoder: dict, dataset: dict, split: str, fraction: float,
                 seed: int) -> Path:
    key = feature_key(encoder, dataset, split, fraction, seed)
    name = f"{_slug(dataset['name'])}_{_slug(split)}_{_slug(encoder['name'])}_{key}.h5"
    return Path(cache_dir) / "features" / name


def text_key(clip: dict, prompt_set: dict) -> str:
    enc = {k: v for k, v in clip.items() if k != "name"}
    enc["pretrained"] = weights_fingerprint(str(clip.get("pretrained", "")))
    return _digest({"clip": enc, "prompts": prompt_set})


def text_path(cache_dir: Path, clip: dict, set_name: str, prompt_set: dict) -> Path:
    """`prompt_set` holds the prompts' content (templates and class names, or the prompt list)."""
    key = text_key(clip, prompt_set)
    return Path(cache_dir) / "text" / f"{_slug(set_name)}_{_slug(clip['name'])}_{key}.h5"
