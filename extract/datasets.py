"""Datasets by kind: one entry point, a registry of builders. Each returns a torch Dataset of
(PIL image, label) with clean class names; extraction never needs more than that.

Kinds: the generated `shapes` world and its support sets (`shapes-support`: name-only, `shapes-shots`:
k images a class of its train split); torchvision datasets from a local `root` (`cifar10`, `cifar100`,
`flowers102`, `pets`, `cars`; `options.download = true` fetches them where there is network);
ImageFolder trees `<root>/<split>/<class>/<image>` (`imagefolder`, `imagenet` (and ImageNet-100 through
`options.class_list`), `cub200`, `herbarium19`); local tar shards in CLIP_benchmark's layout
(`webdataset`, `extract/webdataset_kind.py`). `options.classnames_file` overrides class names: a text
file (one name a line, in class-index order) or a CLIP_benchmark-style JSON (`options.classnames_key`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.settings import build

from .settings import DATASET_KINDS


@dataclass
class Split:
    dataset: Dataset
    classnames: list[str]
    #: named sets of class indices scored on their own as well (e.g. held-out combinations)
    class_groups: dict[str, list[int]] = field(default_factory=dict)
    #: the captions of item i, for datasets that have them (retrieval); None when it has none
    captions: Callable[[int], list[str]] | None = None
    #: first item of each group that a batch or a dask shard never crosses (the tar shards of a
    #: webdataset); None: no such groups
    groups: list[int] | None = None


def _opts(spec: dict) -> dict:
    return spec.get("options", {})


def _shapes(spec: dict, split: str) -> Split:
    from .world import CLASSNAMES, HELD_OUT_LABELS, ShapesWorld

    opts = _opts(spec)
    size = opts.get(f"{split}_size", 0)
    if not size:
        raise PipelineError(
            f"dataset {spec['name']!r} (shapes) has no split {split!r}: use train or test "
            f"(with options.{split}_size > 0)"
        )
    held_out = list(HELD_OUT_LABELS)
    seen = [c for c in range(len(CLASSNAMES)) if c not in held_out]
    world = ShapesWorld(split=split, size=size, seed=opts["seed"], image_size=opts["image_size"], style=opts["style"])
    return Split(world, list(CLASSNAMES), {"held_out": held_out, "seen": seen}, lambda i: [world.caption(i)])


def _support_set(spec: dict, split: str, make: Callable[[dict], Dataset]) -> Split:
    """A support set of the world, one split (`train`), made by `make(options)`."""
    from .world import CLASSNAMES

    if split != "train":
        raise PipelineError(f"dataset {spec['name']!r} ({spec['kind']}) has only the split 'train', not {split!r}")
    try:
        ds = make(_opts(spec))
    except (TypeError, ValueError) as e:
        raise PipelineError(f"dataset {spec['name']!r} ({spec['kind']}): {e}") from None
    return Split(ds, list(CLASSNAMES))


def _shapes_support(spec: dict, split: str) -> Split:
    """A name-only support set of the world (SuS-X's SuS): `options.per_class` images of each class,
    rendered from its class name alone (`extract/world.py` `render_from_classname`) in `options.style`."""
    from .world import CLASSNAMES, ClassNameSupportSet

    return _support_set(
        spec,
        split,
        lambda o: ClassNameSupportSet(o["per_class"], o["seed"], o["image_size"], CLASSNAMES, style=o["style"]),
    )


def _shapes_shots(spec: dict, split: str) -> Split:
    """An in-distribution k-shot support set: the first `options.per_class` images of each class of the
    world's train split (`extract/world.py` `KShotSet`), in the test images' style unless told."""
    from .world import KShotSet

    return _support_set(spec, split, lambda o: KShotSet(o["per_class"], o["seed"], o["image_size"], style=o["style"]))


def user_classnames(spec: dict, count: int | None) -> list[str] | None:
    """Class names from `options.classnames_file`, checked against the dataset's class count (if known)."""
    path = _opts(spec).get("classnames_file")
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise PipelineError(f"dataset {spec['name']!r}: cannot read classnames_file {path}: {e}") from None
    if path.endswith(".json"):
        key = _opts(spec).get("classnames_key") or spec["name"]
        try:
            table = json.loads(text)
        except json.JSONDecodeError as e:
            raise PipelineError(f"dataset {spec['name']!r}: classnames_file {path} is not valid JSON ({e})") from None
        if key not in table:
            raise PipelineError(f"{path} has no entry {key!r}: set options.classnames_key")
        names = table[key]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if count is not None and len(names) != count:
        raise PipelineError(f"{path} lists {len(names)} class names, dataset {spec['name']!r} has {count} classes")
    return names


def _clean(name: str) -> str:
    """'aquarium_fish' -> 'aquarium fish'; '001.Black_footed_Albatross' -> 'Black footed Albatross'."""
    return re.sub(r"^\d+\.", "", name).replace("_", " ").strip()


def _named(spec: dict, dataset: Dataset, found: list[str] | None) -> Split:
    names = user_classnames(spec, len(found) if found else _count_classes(dataset))
    if names is None and found is None:
        raise PipelineError(
            f"dataset {spec['name']!r}: torchvision gives no class names for it; set "
            f"options.classnames_file (a text file, or CLIP_benchmark's en_classnames.json)"
        )
    return Split(dataset, names or found)


def _count_classes(dataset: Dataset) -> int:
    labels = getattr(dataset, "_labels", None) or getattr(dataset, "targets", None)
    return len(set(labels)) if labels is not None else 0


# torchvision datasets: constructor, how a split name becomes its arguments, where names come from.
_TV: dict[str, tuple[str, Callable[[str], dict], Callable[[Dataset], list[str] | None]]] = {
    "cifar10": ("CIFAR10", lambda s: {"train": s == "train"}, lambda d: [_clean(c) for c in d.classes]),
    "cifar100": ("CIFAR100", lambda s: {"train": s == "train"}, lambda d: [_clean(c) for c in d.classes]),
    "flowers102": ("Flowers102", lambda s: {"split": s}, lambda d: None),
    "pets": (
        "OxfordIIITPet",
        lambda s: {"split": "trainval" if s == "train" else s},
        lambda d: [_clean(c) for c in d.classes],
    ),
    "cars": ("StanfordCars", lambda s: {"split": s}, lambda d: [_clean(c) for c in d.classes]),
}


def _unverified(cls: type) -> type:
    """The torchvision class without its md5 checks, for re-packed copies (`options.verify = false`)."""
    return type(
        f"Unverified{cls.__name__}",
        (cls,),
        {"_check_integrity": lambda self: True, "_load_meta": _load_meta_unverified},
    )


def _load_meta_unverified(self) -> None:
    import pickle  # torchvision's own CIFAR format; the user vouches for the files by turning verify off

    with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
        self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
    self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def _torchvision(spec: dict, split: str) -> Split:
    import torchvision.datasets as tvd

    cls_name, split_args, names = _TV[spec["kind"]]
    root = spec.get("root", "")
    if not root:
        raise PipelineError(
            f"dataset {spec['name']!r} ({spec['kind']}) needs `root`: the folder that holds "
            f"torchvision's {cls_name} files"
        )
    try:
        cls = getattr(tvd, cls_name)
        if _opts(spec).get("verify", True) is False and cls_name.startswith("CIFAR"):
            cls = _unverified(cls)
        ds = cls(root, download=bool(_opts(spec).get("download", False)), **split_args(split))
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        raise PipelineError(
            f"dataset {spec['name']!r}: no {cls_name} {split!r} data under {root} "
            f"({str(e).splitlines()[0]}); put torchvision's files there or set "
            f"options.download = true"
        ) from None
    return _named(spec, ds, names(ds))


def _lazy_image(path: str) -> Image.Image:
    """An image opened, not yet decoded: extraction decodes JPEGs at a reduced size (`decode.py`)."""
    return Image.open(path)


def _folder_tree(spec: dict, split: str, keep: set[str] | None = None):
    from torchvision.datasets import ImageFolder

    root = Path(spec.get("root", "")) / split
    if not spec.get("root") or not root.is_dir():
        raise PipelineError(
            f"dataset {spec['name']!r}: expected an ImageFolder tree at {root} "
            f"(<root>/{split}/<class>/<image>); fix `root` in the config"
        )

    class _Subset(ImageFolder):
        def find_classes(self, directory):
            classes = sorted(
                e.name for e in Path(directory).iterdir() if e.is_dir() and (keep is None or e.name in keep)
            )
            if not classes:
                raise PipelineError(f"dataset {spec['name']!r}: no class folders under {directory}")
            return classes, {c: i for i, c in enumerate(classes)}

    try:
        ds = _Subset(str(root), loader=_lazy_image)
    except FileNotFoundError as e:
        raise PipelineError(f"dataset {spec['name']!r}: {e}") from None
    return ds


def _imagefolder(spec: dict, split: str) -> Split:
    ds = _folder_tree(spec, split)
    return _named(spec, ds, [_clean(c) for c in ds.classes])


def _imagenet(spec: dict, split: str) -> Split:
    """ImageNet-1k, or ImageNet-100 with `options.class_list` (a file of WordNet ids, one a line).

    Names are open_clip's CLIP-style ImageNet names, matched to WordNet ids through the sorted order of
    the 1000 class folders, so the tree must hold all of them unless `classnames_file` is given.
    """
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    keep = None
    if _opts(spec).get("class_list"):
        keep = {ln.strip() for ln in Path(_opts(spec)["class_list"]).read_text().splitlines() if ln.strip()}
    ds = _folder_tree(spec, split, keep)
    names = user_classnames(spec, len(ds.classes))
    if names is None:
        every = sorted(e.name for e in (Path(spec["root"]) / split).iterdir() if e.is_dir())
        if len(every) != len(IMAGENET_CLASSNAMES):
            raise PipelineError(
                f"dataset {spec['name']!r}: {len(every)} class folders, ImageNet has 1000; give "
                f"options.classnames_file for a partial tree"
            )
        names = [IMAGENET_CLASSNAMES[every.index(w)] for w in ds.classes]
    return Split(ds, names)


def _webdataset(spec: dict, split: str) -> Split:
    """Tar shards with `<key>.jpg|png|webp` + `<key>.cls`; names from `<root>/classnames.txt` or the file
    `options.classnames_file` gives."""
    from .webdataset_kind import TarShards, find_shards

    shards = find_shards(spec["name"], spec.get("root", ""), split, _opts(spec)["shards"])
    if not _opts(spec).get("classnames_file"):
        path = Path(spec["root"]) / "classnames.txt"
        if not path.is_file():
            raise PipelineError(
                f"dataset {spec['name']!r}: no {path} (one class name a line, in label order); "
                f"write it or set options.classnames_file"
            )
        spec = {**spec, "options": {**_opts(spec), "classnames_file": str(path)}}
    # the labels are in the .cls members, so the class count comes from the names, and checks them
    names = user_classnames(spec, None)
    ds = TarShards(shards, len(names))
    return Split(ds, names, groups=[int(s) for s in ds.starts[:-1]])


def _imported(spec: dict, split: str) -> Split:
    raise PipelineError(
        f"dataset {spec['name']!r} is imported (kind = 'imported'): it has no images to "
        f"extract; bring its features in with `pipeline cache import` and leave it out of "
        f"[extract] splits"
    )


#: Every kind of `extract/settings.py` DATASET_KINDS, opened here.
DATASETS: dict[str, Callable[[dict, str], Split]] = {
    "shapes": _shapes,
    "shapes-support": _shapes_support,
    "shapes-shots": _shapes_shots,
    **{kind: _torchvision for kind in _TV},
    "imagefolder": _imagefolder,
    "imagenet": _imagenet,
    "cub200": _imagefolder,
    "herbarium19": _imagefolder,
    "webdataset": _webdataset,
    "imported": _imported,
}
assert DATASETS.keys() == DATASET_KINDS.keys(), "every dataset kind needs its options and its builder"


def open_split(spec: dict, split: str) -> Split:
    """`spec` is a dataset from the config (`DatasetCfg.spec()`: name, kind, root, options); options it
    leaves out take their kind's defaults."""
    kind = spec.get("kind")
    if kind not in DATASETS:
        raise PipelineError(f"dataset {spec.get('name')!r} has unknown kind {kind!r} (known: {', '.join(DATASETS)})")
    options = asdict(build(DATASET_KINDS[kind], spec.get("options", {}), f"dataset {spec.get('name')} options"))
    split_data = DATASETS[kind]({**spec, "options": options}, split)
    if len(split_data.dataset) == 0:
        raise PipelineError(f"dataset {spec['name']!r} split {split!r} is empty")
    names = split_data.classnames
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:  # two classes would share one prompt set, and zero-shot could not tell them apart
        where = f"classnames_file {options['classnames_file']}" if options.get("classnames_file") else "its class names"
        raise PipelineError(
            f"dataset {spec['name']!r}: {where} name {repeated!r} for classes "
            f"{[i for i, n in enumerate(names) if n == repeated]}; every class needs its own name"
        )
    return split_data
