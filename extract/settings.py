"""The `[extract]` table and the options of each dataset kind, checked when the config is read.

Light on purpose (no torch): the config loader checks every dataset's options against its kind here,
also in processes that never extract.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.settings import Subsets, allows, at_least, device_name, each, setting, split_ref


@dataclass
class ExtractCfg(Subsets):
    """`pipeline extract`: which splits go through CLIP and every encoder, and how (batches, workers, device,
    a dask cluster)."""

    splits: list[str] = setting(lambda: ["shapes:train", "shapes:test"], each(split_ref))  # the splits to extract
    batch_size: int = setting(64, at_least(1))  # images per batch: every encoder sees the same batch
    num_workers: int = setting(-1, at_least(-1))  # DataLoader workers decoding (-1: one per available core, less one)
    prefetch: int = setting(4, at_least(1))  # batches each worker decodes ahead
    device: str = setting("auto", device_name)  # where the encoders run (auto: a GPU when there is one)
    on_bad_image: typing.Literal["skip", "fail"] = "skip"  # an unreadable image: skipped (and listed) or fatal
    scheduler: str = ""  # dask.distributed address: shard the splits over its workers
    cluster: typing.Literal["", "local-cuda", "slurm", "pbs"] = ""  # or start a cluster for it (docs/scale.md)
    cluster_jobs: int = setting(1, at_least(1))  # slurm / pbs: batch jobs to submit (one worker, one GPU each)
    cluster_options: dict = setting(dict)  # keyword arguments of LocalCUDACluster / SLURMCluster / PBSCluster
    shards: int = setting(0, at_least(0))  # shards per split on a scheduler (0 = one per worker)
    captions: list[str] = setting(list, each(split_ref))  # splits whose captions CLIP embeds (for retrieval)

    def __post_init__(self) -> None:
        if self.scheduler and self.cluster:
            raise PipelineError(
                f"[extract] sets both scheduler ({self.scheduler}) and cluster ({self.cluster!r}): "
                f"use an existing scheduler or start a cluster, not both"
            )

    @property
    def distributed(self) -> bool:
        """Whether the splits are sharded over a dask cluster's workers."""
        return bool(self.scheduler or self.cluster)


@allows("an existing file, or empty")
def existing_file(v: str) -> str | None:
    return None if not v or Path(v).is_file() else f"must name an existing file, got {v!r}"


# ---- options of each dataset kind ----------------------------------------------------------------

#: the world's rendering styles, as `extract/world.py` STYLES names them (here without importing torch)
STYLES = ("photo", "sketch")


@allows(", ".join(STYLES))
def world_style(v: str) -> str | None:
    return None if v in STYLES else f"must be one of {', '.join(map(repr, STYLES))}, got {v!r}"


@dataclass
class ShapesOptions:
    """The generated world (`extract/world.py`): sizes of its splits, seed, image size and style."""

    train_size: int = setting(2000, at_least(0))  # images of the train split
    test_size: int = setting(640, at_least(0))  # images of the test split
    seed: int = setting(0, at_least(0))  # seed of the generator
    image_size: int = setting(64, at_least(32))  # side of the square images, in pixels
    style: str = setting("photo", world_style)  # how it is drawn: photo (the default) or sketch


@dataclass
class SupportOptions:
    """A name-only support set rendered from the world's class names (one split, `train`)."""

    per_class: int = setting(16, at_least(1))  # images rendered per class name
    seed: int = setting(0, at_least(0))  # seed of the generator
    image_size: int = setting(64, at_least(32))  # side of the square images, in pixels
    style: str = setting("sketch", world_style)  # unlike the test images, as SuS-X's generated ones


@dataclass
class ShotsOptions:
    """An in-distribution k-shot support set: the first `per_class` images of each class of the world's
    train split (`seed`, `image_size` and `style` as the world's; one split, `train`)."""

    per_class: int = setting(16, at_least(1))  # images taken per class
    seed: int = setting(0, at_least(0))  # seed of the world whose train split they come from
    image_size: int = setting(64, at_least(32))  # side of the square images, in pixels
    style: str = setting("photo", world_style)  # the world's style they are drawn in


@dataclass
class FolderOptions:
    """An ImageFolder tree `<root>/<split>/<class>/<image>`; class names from the folders or a file."""

    classnames_file: str = setting("", existing_file)  # one name a line, or CLIP_benchmark-style JSON
    classnames_key: str = ""  # the entry of a JSON classnames_file


@dataclass
class ImageNetOptions(FolderOptions):
    """ImageNet as an ImageFolder tree, or ImageNet-100 with `class_list`."""

    class_list: str = setting("", existing_file)  # ImageNet-100: one WordNet id a line


@dataclass
class TorchvisionOptions(FolderOptions):
    """A torchvision dataset under `root` (its own file layout and class names)."""

    download: bool = False  # fetch the files where there is network
    verify: bool = True  # torchvision's md5 checks (off for re-packed CIFAR copies)


@dataclass
class WebDatasetOptions(FolderOptions):
    """Local tar shards (CLIP_benchmark / clip-retrieval layout); names from `<root>/classnames.txt`
    unless `classnames_file` is given."""

    shards: str = ""  # brace pattern under root ("{split}" filled in); "" = <root>/<split>/*.tar


@dataclass
class NoOptions:
    """Features brought in by `pipeline cache import`: nothing to set."""


#: Every dataset kind and its options; `extract/datasets.py` opens each kind.
DATASET_KINDS: dict[str, type] = {
    "shapes": ShapesOptions,
    "shapes-support": SupportOptions,
    "shapes-shots": ShotsOptions,
    "cifar10": TorchvisionOptions,
    "cifar100": TorchvisionOptions,
    "flowers102": TorchvisionOptions,
    "pets": TorchvisionOptions,
    "cars": TorchvisionOptions,
    "imagefolder": FolderOptions,
    "imagenet": ImageNetOptions,
    "cub200": FolderOptions,
    "herbarium19": FolderOptions,
    "webdataset": WebDatasetOptions,
    "imported": NoOptions,
}
