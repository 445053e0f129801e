"""The `webdataset` dataset kind: local tar shards in the layout CLIP_benchmark and clip-retrieval use,

    <root>/<split>/0.tar, 1.tar, ...   samples <key>.jpg|jpeg|png|webp + <key>.cls (the label, an integer)
    <root>/<split>/nshards.txt         optional: the number of shards (as CLIP_benchmark reads it)
    <root>/classnames.txt              one class name a line, in label order

or any brace pattern under `root` (`options.shards = "{split}-{000..099}.tar"`).

Extraction needs random access in index order (nested subsets, batches that resume, shards of a split
on several workers), so each shard's tar headers are listed once (the data is skipped over, not read)
and sample i is read by seeking to its first header and handing the stream to webdataset's own tar
iterator and key grouping: the same samples, keys and bytes as `webdataset.WebDataset` streams. Item i
is the i-th sample in shard order; `Split.groups` holds where each shard starts, so batches and dask
shards never cross a tar file (a worker reads whole tar shards).

Shards are checked like files before anything is extracted, each problem one line naming the shard
(and sample): a shard missing from its sequence, from a brace pattern or from what `nshards.txt`
counts (or one it does not count), a shard cut short, a sample without a label or image, a label that
is not a class index (read with the headers, not with the images). A corrupt image is a bad image
(`on_bad_image`), named `<shard>:<key>`.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.keys import TruncatedTar, tar_members

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class ShardIndex:
    """Where each sample of one tar file starts, how many members it has, and its label."""

    offsets: tuple[int, ...]
    members: tuple[int, ...]
    labels: tuple[int, ...]


def _meta(name: str) -> bool:
    """webdataset skips `__x__` members (its metadata)."""
    return bool(re.match(r"__[^/]*__($|/)", name))


def _index(path: Path, n_classes: int) -> ShardIndex:
    from webdataset.tariterators import base_plus_ext

    offsets, members, labels, suffixes, key = [], [], [], [], None
    try:
        listing = tar_members(path)
    except TruncatedTar as e:
        raise PipelineError(f"tar shard {path.name} is truncated: {e}; copy or write it again") from None
    except tarfile.ReadError as e:
        raise PipelineError(
            f"{path.name} is not a readable uncompressed tar shard ({e}): write the shards as plain .tar files"
        ) from None
    for m in listing:
        prefix, suffix = base_plus_ext(m.name)
        if _meta(m.name) or prefix is None:
            continue
        if prefix != key:
            _check_sample(path, key, suffixes)
            key, suffixes = prefix, []
            offsets.append(m.offset)
            members.append(0)
            labels.append(None)
        members[-1] += 1
        suffixes.append(suffix.lower())
        if suffix.lower() == "cls":
            labels[-1] = _label(path, key, m.label, n_classes)
    _check_sample(path, key, suffixes)
    return ShardIndex(tuple(offsets), tuple(members), tuple(labels))


def _label(path: Path, key: str, data: bytes, n_classes: int) -> int:
    """A sample's `.cls`: a class index, 0 to n_classes - 1 (as webdataset writes it: the decimal digits)."""
    text = data.decode("utf-8", "replace").strip()
    if not re.fullmatch(r"[+-]?\d+", text) or not 0 <= int(text) < n_classes:
        raise PipelineError(
            f"{path.name}:{key}: its .cls is {text[:20]!r}, not a class index 0..{n_classes - 1} "
            f"(the dataset has {n_classes} class names): fix the label or the class names"
        )
    return int(text)


def _check_sample(path: Path, key: str | None, suffixes: list[str]) -> None:
    if key is None:
        return
    if "cls" not in suffixes:
        raise PipelineError(
            f"{Path(path).name}: sample {key!r} has no .cls member (the label): every sample "
            f"needs <key>.cls next to its image"
        )
    if not any(s in IMAGE_EXTENSIONS for s in suffixes):
        raise PipelineError(f"{Path(path).name}: sample {key!r} has no image (.{', .'.join(IMAGE_EXTENSIONS)})")


def _natural(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _gap(paths: list[Path]) -> str | None:
    """The first name missing from a numbered sequence of shards (`3.tar` between `2.tar` and
    `4.tar`, zero-padded names alike), or None: names that form no one sequence are left as they are."""
    parts = [re.fullmatch(r"(.*?)(\d+)(\D*)", p.name) for p in paths]
    if not all(parts) or len({(m[1], m[3]) for m in parts}) != 1:
        return None
    numbers = sorted(int(m[2]) for m in parts)
    width = len(parts[0][2]) if len({len(m[2]) for m in parts}) == 1 else 0
    return next(
        (f"{parts[0][1]}{n + 1:0{width}d}{parts[0][3]}" for n, after in zip(numbers, numbers[1:]) if after != n + 1),
        None,
    )


def _counted(name: str, folder: Path, paths: list[Path]) -> list[Path]:
    """The shards `nshards.txt` counts (`0.tar` .. `<n-1>.tar`, as CLIP_benchmark reads them): every one
    there and no other."""
    counted = folder / "nshards.txt"
    text = counted.read_text().strip()
    if not text.isdigit():
        raise PipelineError(
            f"dataset {name!r}: {counted} holds {text[:20]!r}, not a number of shards: write the "
            f"number of .tar files in {folder}"
        )
    expected = [folder / f"{i}.tar" for i in range(int(text))]
    if lost := [p.name for p in expected if not p.is_file()]:
        raise PipelineError(
            f"dataset {name!r}: {counted} says {len(expected)} shards, {len(lost)} missing (first: {lost[0]})"
        )
    if extra := sorted({p.name for p in paths} - {p.name for p in expected}, key=lambda n: _natural(Path(n))):
        raise PipelineError(
            f"dataset {name!r}: {counted} says {len(expected)} shards, {folder} holds "
            f"{len(extra)} more (first: {extra[0]}): fix the count or move them away"
        )
    return expected


def find_shards(name: str, root: str, split: str, pattern: str) -> list[Path]:
    """The split's tar shards: `pattern` (braces expanded by webdataset, `{split}` filled in) under
    `root`, or every `.tar` of `<root>/<split>` in numeric order, checked against its `nshards.txt`
    and for a gap in their numbers."""
    from webdataset.shardlists import expand_urls

    if not root:
        raise PipelineError(
            f"dataset {name!r} (webdataset) needs `root`: the folder that holds <split>/*.tar and classnames.txt"
        )
    if pattern:
        paths = [Path(root) / p for p in expand_urls(pattern.replace("{split}", split))]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise PipelineError(
                f"dataset {name!r}: {len(missing)} of the {len(paths)} shards of options.shards "
                f"= {pattern!r} are missing (first: {missing[0]}); fix the pattern or the files"
            )
        return paths
    folder = Path(root) / split
    if not folder.is_dir():
        raise PipelineError(
            f"dataset {name!r}: no folder {folder} of tar shards (<root>/<split>/*.tar); fix "
            f"`root`, or set options.shards to a brace pattern"
        )
    paths = sorted(folder.glob("*.tar"), key=_natural)
    if not paths:
        raise PipelineError(f"dataset {name!r}: no .tar shards in {folder}")
    if (folder / "nshards.txt").is_file():
        return _counted(name, folder, paths)
    if lost := _gap(paths):
        raise PipelineError(
            f"dataset {name!r}: shard {folder / lost} is missing from the sequence "
            f"{paths[0].name} .. {paths[-1].name}: restore it, or list the shards in "
            f"options.shards (a brace pattern)"
        )
    return paths


class TarShards(Dataset):
    """Samples of local tar shards as (lazily decoded PIL image, label); item i is the i-th sample."""

    def __init__(self, shards: list[Path], n_classes: int):
        self.shards = [str(p) for p in shards]
        self.index = [_index(Path(p), n_classes) for p in shards]
        self.starts = np.cumsum([0] + [len(ix.offsets) for ix in self.index])
        self._file: tuple[int, int, object] | None = None  # (process, shard, open file)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}  # open files stay in the process that opened them

    def _stream(self, shard: int):
        """The shard's file, opened by this process: a forked DataLoader worker must not share the
        parent's file position."""
        if self._file is None or self._file[:2] != (os.getpid(), shard):
            if self._file is not None and self._file[0] == os.getpid():
                self._file[2].close()
            self._file = (os.getpid(), shard, open(self.shards[shard], "rb"))
        return self._file[2]

    def describe(self, i: int) -> str:
        """Where sample i is, for an error line: its shard and its key."""
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        return f"{Path(self.shards[shard]).name}:{self.sample(i)['__key__']}"

    def sample(self, i: int) -> dict:
        """Sample i as webdataset groups it: `__key__` and one bytes entry per member suffix."""
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        j = i - int(self.starts[shard])
        f = self._stream(shard)
        f.seek(self.index[shard].offsets[j])
        files = (
            {**m, "__url__": self.shards[shard]} for m in islice(tar_file_iterator(f), self.index[shard].members[j])
        )
        return next(group_by_keys(files))

    def __getitem__(self, i: int):
        s = self.sample(i)
        image = next(s[e] for e in IMAGE_EXTENSIONS if e in s)
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        return Image.open(io.BytesIO(image)), self.index[shard].labels[i - int(self.starts[shard])]
