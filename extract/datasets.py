"""Datasets by kind: one entry point, a registry of builders. Each returns a torch Dataset of
(PIL image, label) with its class names; extraction never needs more than that."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from zoomshot.cache.errors import PipelineError


@dataclass
class Split:
    dataset: Dataset
    classnames: list[str]


def _shapes(spec: dict, split: str) -> Split:
    from .world import CLASSNAMES, ShapesWorld

    opts = {"train_size": 2000, "test_size": 640, "seed": 0, "image_size": 64, **spec.get("options", {})}
    sizes = {"train": opts["train_size"], "test": opts["test_size"], "val": opts.get("val_size", 0)}
    if not sizes.get(split):
        raise PipelineError(f"dataset {spec['name']!r} (shapes) has no split {split!r}: use train or test, "
                            f"or set options.{split}_size")
    world = ShapesWorld(split=split, size=sizes[split], seed=opts["seed"], image_size=opts["image_size"])
    return Split(world, list(CLASSNAMES))


def _classnames_override(spec: dict, found: list[str]) -> list[str]:
    """A user file (one name a line, in class-index order) replaces folder-derived names."""
    path = spec.get("options", {}).get("classnames_file")
    if not path:
        return found
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(names) != len(found):
        raise PipelineError(f"{path} lists {len(names)} class names, the dataset has {len(found)} classes")
    return names


def _imagefolder(spec: dict, split: str) -> Split:
    from torchvision.datasets import ImageFolder

    root = Path(spec.get("root", "")) / split
    if not root.is_dir():
        raise PipelineError(f"dataset {spec['name']!r}: expected an ImageFolder tree at {root} "
                            f"(one sub-folder of images per class); fix `root` in the config")
    ds = ImageFolder(str(root))
    if len(ds) == 0:
        raise PipelineError(f"dataset {spec['name']!r}: no images under {root}")
    names = [c.replace("_", " ") for c in ds.classes]
    return Split(ds, _classnames_override(spec, names))


DATASETS: dict[str, Callable[[dict, str], Split]] = {
    "shapes": _shapes,
    "imagefolder": _imagefolder,
}


def open_split(spec: dict, split: str) -> Split:
    """`spec` is a dataset identity from the config (name, kind, root, options)."""
    kind = spec.get("kind")
    if kind not in DATASETS:
        raise PipelineError(f"dataset {spec.get('name')!r} has unknown kind {kind!r} "
                            f"(known: {', '.join(DATASETS)})")
    split_data = DATASETS[kind](spec, split)
    if len(split_data.dataset) == 0:
        raise PipelineError(f"dataset {spec['name']!r} split {split!r} is empty")
    return split_data
