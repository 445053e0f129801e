"""Stand-in data for a dress rehearsal (`pipeline rehearse`): every dataset of a config replaced by
generated images at its real image size, in its real layout where that can be made offline, with its
real class names where a library ships them, capped at N classes and K images per class.

Pure data making: it rewrites the raw config (a TOML dict) to point at the generated folders and says
what it substituted; the command runs the stages on the result. The published sizes of each dataset
(`REAL`) project the real run's cache and time from what the rehearsal measures.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from zoomshot.cache.settings import parse_ref


@dataclass(frozen=True)
class RealData:
    """A dataset kind as published: images per split, classes, a typical image size (w, h) and format."""

    splits: dict[str, int]
    classes: int
    size: tuple[int, int]
    suffix: str = ".jpg"


#: Published split sizes (the datasets' papers / torchvision's docs); sizes are typical, not exact.
REAL: dict[str, RealData] = {
    "imagenet": RealData({"train": 1_281_167, "val": 50_000}, 1000, (500, 375), ".JPEG"),
    "cifar10": RealData({"train": 50_000, "test": 10_000}, 10, (32, 32), ".png"),
    "cifar100": RealData({"train": 50_000, "test": 10_000}, 100, (32, 32), ".png"),
    "flowers102": RealData({"train": 1_020, "val": 1_020, "test": 6_149}, 102, (500, 625)),
    "pets": RealData({"train": 3_680, "test": 3_669}, 37, (500, 375)),
    "cars": RealData({"train": 8_144, "test": 8_041}, 196, (700, 470)),
    "cub200": RealData({"train": 5_994, "test": 5_794}, 200, (500, 375)),
    "herbarium19": RealData({"train": 34_225, "test": 2_679}, 683, (680, 1000)),
}
IMAGENET100_CLASSES = 100
#: Kinds whose real layout is torchvision's own files (pickles, .mat, annotation CSVs, md5-checked):
#: rehearsed as an ImageFolder of the same images and names.
TORCHVISION_FILES = ("cifar10", "cifar100", "flowers102", "pets", "cars")
#: The user's own data: sizes counted where the images are, a typical photo size otherwise.
USER_KINDS = ("imagefolder", "webdataset")
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def user_data(root: str, classes_if_unknown: int) -> RealData:
    """An ImageFolder of the user's as far as this machine can see it: images per split and classes
    counted under `root` where it exists (none counted: the projection leaves it out)."""
    splits, classes = {}, 0
    if root and Path(root).is_dir():
        for split in (p for p in Path(root).iterdir() if p.is_dir()):
            folders = [c for c in split.iterdir() if c.is_dir()]
            classes = max(classes, len(folders))
            splits[split.name] = sum(1 for c in folders for f in c.iterdir() if f.is_file())
    return RealData(splits, classes or classes_if_unknown, (500, 375))


def real_names(kind: str, options: dict) -> tuple[list[str] | None, str]:
    """The real class names of a kind where a library installed here ships them, and where from."""
    if kind == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES), "open_clip's ImageNet names"
    if kind == "cifar10":
        return CIFAR10, "CIFAR-10's published names"
    key = {"flowers102": "flowers", "pets": "pets"}.get(kind)
    if key:
        try:
            import clip_benchmark
        except ImportError:
            return None, "none (clip_benchmark is not installed)"
        table = json.loads((Path(clip_benchmark.__file__).parent / "datasets" / "en_classnames.json").read_text())
        return table[key], "CLIP_benchmark's en_classnames.json"
    return None, "none shipped offline: numbered stand-ins"


def imagenet_wnids() -> list[str]:
    """ImageNet-1k's WordNet ids in class-index order (timm ships the list)."""
    import timm

    return (Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt").read_text().split()


def image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth random colour field with fine noise: natural-image-like statistics, so JPEG sizes and
    decode costs are near real ones, at a fraction of the cost of rendering scenes."""
    w, h = size
    coarse = rng.uniform(0, 255, (max(2, h // 32), max(2, w // 32), 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@dataclass
class StandIn:
    """One dataset of the config, rehearsed."""

    name: str
    kind: str  # the config's kind
    layout: str  # the kind rehearsed ("imagefolder" where torchvision's files cannot be made)
    classes: list[str]
    names_from: str
    real: RealData | None
    images: dict[str, int] = field(default_factory=dict)  # split -> generated images
    class_list: bool = False  # ImageNet-100: a class list picks 100 of the 1,000 classes

    @property
    def real_classes(self) -> int:
        return IMAGENET100_CLASSES if self.class_list else self.real.classes

    def real_images(self, split: str) -> int:
        """The published image count of a split (ImageNet-100: its share of ImageNet's)."""
        return self.real.splits.get(split, 0) * self.real_classes // self.real.classes


def _folder(i: int, name: str) -> str:
    """'007.Black footed Albatross' (CUB's layout): sorted folders keep class order, names come back clean."""
    return f"{i:03d}." + "".join(c if c.isalnum() or c in " -'" else "_" for c in name).strip()


def _write_split(
    root: Path, split: str, folders: list[str], per_class: int, size: tuple[int, int], suffix: str, seed: int
) -> int:
    rng = np.random.default_rng(seed)
    for folder in folders:
        target = root / split / folder
        target.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            if (target / f"{k:05d}{suffix}").exists():  # a root two datasets share (ImageNet and ImageNet-100)
                continue
            jitter = rng.uniform(0.8, 1.2)
            img = image(rng, (max(8, round(size[0] * jitter)), max(8, round(size[1] * jitter))))
            img.save(target / f"{k:05d}{suffix}", **({"quality": 90} if suffix != ".png" else {}))
    return len(folders) * per_class


def stand_in(raw: dict, out: Path, classes: int, per_class: int, min_train_rows: int = 2) -> tuple[dict, list[StandIn]]:
    """The raw config rewritten to generated data under `out/data` (and outputs under `out`), with what
    was substituted. Splits used for training get enough images that the smallest fit fraction of the
    split still holds `min_train_rows` rows."""
    cfg = copy.deepcopy(raw)
    cfg["paths"] = {
        k: str(out / k.removesuffix("_dir")) for k in ("cache_dir", "runs_dir", "results_dir", "report_dir")
    }
    extract, fit = cfg.get("extract", {}), cfg.get("fit", {})
    splits = {parse_ref(r) for r in extract.get("splits", [])}
    train = {parse_ref(p) for r in fit.get("train", []) for p in r.split("+")}
    smallest = min(fit.get("fractions", [1.0]))
    roots: dict[str, Path] = {}
    made: list[StandIn] = []
    for i, d in enumerate(cfg.get("datasets", [])):
        kind, opts = d.get("kind", "shapes"), dict(d.get("options", {}))
        if kind in USER_KINDS:
            real = user_data(d.get("root", ""), classes)
        elif kind in REAL:
            real = REAL[kind]
        else:  # generated (the world) or imported kinds: nothing to stand in for
            continue
        names, source = real_names(kind, opts)
        chosen = list(range(min(classes, real.classes)))
        if kind == "imagenet" and opts.get("class_list"):
            chosen = chosen[:IMAGENET100_CLASSES]
        if names is None:
            names = [f"{d['name']} class {c + 1}" for c in range(real.classes)]
        root = roots.setdefault(d.get("root") or d["name"], out / "data" / d["name"])
        entry = StandIn(
            d["name"],
            kind,
            "imagefolder" if kind in TORCHVISION_FILES + USER_KINDS else kind,
            [names[c] for c in chosen],
            source,
            real,
            class_list=bool(opts.get("class_list")),
        )
        if kind == "imagenet":
            wnids = imagenet_wnids()
            folders = [wnids[c] for c in chosen]
            if opts.get("class_list"):
                opts["class_list"] = str(_lines(out / "data" / f"{d['name']}_class_list.txt", folders))
            if len(chosen) < real.classes:  # a partial tree names its classes (`_imagenet`)
                opts["classnames_file"] = str(_lines(out / "data" / f"{d['name']}_classnames.txt", entry.classes))
        else:
            folders = [_folder(c, names[c]) for c in chosen]
            if opts.get("classnames_file"):  # the user's names file, as the same format with the same key
                opts["classnames_file"] = str(
                    _names_file(out / "data" / f"{d['name']}_classnames", opts, d["name"], entry.classes)
                )
        if entry.layout != kind:  # torchvision's and webdataset's own options mean nothing to an ImageFolder
            opts = {k: v for k, v in opts.items() if k in ("classnames_file", "classnames_key")}
        for j, (name, split) in enumerate(sorted(splits)):
            if name != d["name"]:
                continue
            count = per_class
            if (name, split) in train:  # a fit's fraction counts rows of the whole split (nested subsets)
                count = max(per_class, math.ceil(min_train_rows / smallest / len(folders)))
            entry.images[split] = _write_split(root, split, folders, count, real.size, real.suffix, seed=1009 * i + j)
        cfg["datasets"][i] = {**d, "kind": entry.layout, "root": str(root), "options": opts}
        made.append(entry)
    return cfg, made


def _lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _names_file(stem: Path, opts: dict, dataset: str, names: list[str]) -> Path:
    if str(opts["classnames_file"]).endswith(".json"):
        path = stem.with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({opts.get("classnames_key") or dataset: names}))
        return path
    return _lines(stem.with_suffix(".txt"), names)
