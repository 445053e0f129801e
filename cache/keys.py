"""Content keys: everything that changes the numbers is hashed into a file's name, so a stale file is
never reused (DESIGN.md section 3). Identity is content, not place: a weights file counts by its
sha256, an image tree by its listing, a prompt set by its prompts; no key holds an absolute path.

Pure and torch-free: `fit` and `evaluate` locate files without building any model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

FEATURE_DTYPE = "float16"
LOCAL_DIR = "local-dir:"  # open_clip's prefix of a folder with a config and weights

#: Names of datasets, splits, encoders and variants become parts of file names: no path separators,
#: no leading dot (`../../x` would write outside the output folders).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def digest(obj: Any, n: int = 12) -> str:
    """A short sha256 of a JSON-able object (keys sorted, so dict order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read block by block (a weights file may be larger than memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stamp(path: str | Path) -> tuple[int, int, int]:
    """(size, mtime, ctime) of a file, what a memo of its content is keyed on: a write changes the
    ctime, which no `os.utime` can set back."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


@lru_cache(maxsize=256)
def _file_sha256_at(path: str, stamp: tuple[int, int, int]) -> str:
    return file_sha256(path)


def file_checksum(path: str | Path) -> str:
    """`file_sha256`, memoised on (path, size, mtime, ctime) for keys: a file rewritten in place is hashed again."""
    return _file_sha256_at(str(path), _stamp(path))


def weights_fingerprint(location: str) -> str:
    """A weights tag stays as it is; a local file or a `local-dir:` folder counts by its content."""
    if location.startswith(LOCAL_DIR):
        folder = Path(location.removeprefix(LOCAL_DIR))
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            return "dir-sha256:" + digest({str(p.relative_to(folder)): file_checksum(p) for p in files}, 64)
        return location
    if location and Path(location).is_file():
        return "sha256:" + file_checksum(location)
    return location


def tree_state(folder: Path) -> tuple:
    """Every directory of a tree with its mtime: files added or removed change some directory's mtime;
    and every tar shard's size, mtime and ctime, since a shard is often rewritten in place."""

    def shards(d: str, files: list[str]) -> tuple:
        return tuple(
            (f, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            for f in sorted(files)
            if f.endswith(".tar")
            for st in [os.stat(os.path.join(d, f))]
        )

    return tuple((d, os.stat(d).st_mtime_ns, shards(d, fs)) for d, _, fs in sorted(os.walk(folder)))


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 (sizes of 8 GiB and more)
        return int.from_bytes(field[1:], "big")
    return int(field.rstrip(b"\0 ").strip() or b"0", 8)


def _pax_records(data: bytes) -> dict[str, str]:
    """The `<length> <key>=<value>\\n` records of a pax extended header."""
    records = {}
    while data.strip(b"\0"):
        length = int(data.split(b" ", 1)[0])
        key, _, value = data[len(str(length)) + 1 : length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        data = data[length:]
    return records


class TarMember(NamedTuple):
    """One file of a tar: its name, the offset of its first header, its size and mtime, and for a
    `.cls` member (a webdataset label) its bytes."""

    name: str
    offset: int
    size: int
    mtime: int
    label: bytes | None


#: Members whose bytes are read with the headers (and hashed with them): a webdataset's labels, small
#: and edited in place without changing any header. At most LABEL_BYTES of each (a longer one is no label).
LABEL_SUFFIX, LABEL_BYTES = ".cls", 1024


class TruncatedTar(OSError):
    """A tar that ends inside a member or without its end-of-archive blocks: cut short."""


def _data(fd: int, block: bytes, offset: int, n: int) -> bytes:
    """The first `n` bytes of the data of the header at `offset`; `block` holds its first 512."""
    return block[512 : 512 + n] if n <= 512 else os.pread(fd, n, offset + 512)


@lru_cache(maxsize=4096)
def _tar_scan(path: str, stamp: tuple[int, int, int]) -> tuple[tuple[TarMember, ...], str]:
    """The members of a tar and the sha256 of all its headers (pax records included) and labels, in one
    pass that seeks over the other members' data."""
    import tarfile

    members, offset, start, extended, headers = [], 0, None, {}, hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            block = os.pread(fd, 1024, offset)  # a header and the start of its data: one read for most
            header = block[:512]
            if header == bytes(512):  # the end-of-archive blocks
                break
            if len(header) < 512:
                where = f"after {members[-1].name}" if members else "before its first member"
                raise TruncatedTar(f"it ends {where}, without the end-of-archive blocks")
            if _octal(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:]):
                raise tarfile.ReadError(f"invalid tar header at byte {offset}")
            kind, length = header[156:157], _octal(header[124:136])
            extension = kind in (b"x", b"L", b"g", b"K")  # about the next member, or the archive
            if not extension:
                name = header[:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
                if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
                    name = header[345:500].rstrip(b"\0").decode("utf-8", "surrogateescape") + "/" + name
                name, length = extended.get("path", name), int(extended.get("size", length))
            if offset + 512 + length > stamp[0]:
                raise TruncatedTar(
                    f"it ends inside {'an extended header' if extension else name} "
                    f"({stamp[0] - offset - 512} of its {length} bytes are there)"
                )
            headers.update(header)
            start = offset if start is None else start  # a member starts at its first header
            if kind in (b"x", b"L"):  # pax extended header (webdataset writes one per member), GNU long name
                record = _data(fd, block, offset, length)
                headers.update(record)
                if kind == b"L":
                    extended = {"path": record.rstrip(b"\0").decode("utf-8", "surrogateescape")}
                else:  # the header's own fields hold the rest (mtime to the second)
                    extended = _pax_records(record) if b" path=" in record or b" size=" in record else {}
            elif not extension:
                if kind in (b"0", b"\0", b"7"):
                    label = _data(fd, block, offset, min(length, LABEL_BYTES)) if name.endswith(LABEL_SUFFIX) else None
                    headers.update(label or b"")
                    members.append(
                        TarMember(
                            name, start, length, int(float(extended.get("mtime", _octal(header[136:148])))), label
                        )
                    )
                start, extended = None, {}
            offset += 512 + -(-length // 512) * 512
    finally:
        os.close(fd)
    return tuple(members), headers.hexdigest()


def tar_members(path: str | Path) -> tuple[TarMember, ...]:
    """Each file of an uncompressed tar, from the headers alone (the data is skipped, not read; several
    times faster than `tarfile`; labels are read), memoised on (path, size, mtime, ctime). Raises
    `TruncatedTar` for a tar cut short, `tarfile.ReadError` for what is not an uncompressed tar."""
    return _tar_scan(str(path), _stamp(path))[0]


def _tar_headers(path: str) -> str:
    """sha256 of a tar file's headers (names, sizes, times to the microsecond in webdataset's pax
    records) and labels: a re-packed shard keeps its size (512-byte blocks) more often than its headers,
    and a label edited in place keeps every header."""
    import tarfile

    try:
        return _tar_scan(path, _stamp(path))[1]
    except (tarfile.TarError, TruncatedTar):
        return "unreadable"  # the dataset reader says what is wrong with it


def _listing(folder: str, content: bool) -> str:
    entries = []
    for d, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(d, name)
            entry = (os.path.relpath(path, folder), os.stat(path).st_size)
            if content:
                entries.append((*entry, file_checksum(path)))
            else:
                entries.append((*entry, _tar_headers(path)) if name.endswith(".tar") else entry)
    return ("content-sha256:" if content else "tree-sha256:") + digest(entries, 64)


@lru_cache(maxsize=64)
def _tree_listing(folder: str, state: tuple) -> str:
    return _listing(folder, content=False)


def tree_fingerprint(folder: Path, state: tuple | None = None, content: bool = False) -> str:
    """The listing of an image tree (relative paths and sizes), not its bytes: adding, removing or
    renaming an image changes it, hashing every image of ImageNet on each command would not pay. A tar
    shard (webdataset) also counts by its member headers and labels. `state`: the tree's `tree_state`,
    if taken. With `content` (`[extract] content_hash`), every file also counts by the sha256 of its
    bytes (an image rewritten in place with the same size is seen; docs/cache.md says what it costs)."""
    if content:
        return _listing(str(folder), content=True)
    return _tree_listing(str(folder), state or tree_state(Path(folder)))


def data_folder(root: str, split: str) -> Path:
    """What can change on disk under a dataset's `root` (an existing folder): the split's image tree
    (`<root>/<split>`), or the whole root for datasets stored in other layouts (torchvision's files)."""
    folder = Path(root) / split
    return folder if folder.is_dir() else Path(root)


def folder_names(root: str) -> list[str]:
    """The folders one and two levels under `root` (`<split>/<class>` of an image tree): a class
    folder added or renamed changes the class names."""
    if not root or not Path(root).is_dir():
        return []
    top = sorted(e.name for e in os.scandir(root) if e.is_dir())
    return top + sorted(f"{t}/{c.name}" for t in top for c in os.scandir(os.path.join(root, t)) if c.is_dir())


def content_of_options(options: dict) -> dict:
    """Dataset options with every value that names an existing file replaced by that file's sha256
    (class-name files, class lists): editing such a file changes the key."""
    return {
        k: ("sha256:" + file_checksum(v) if isinstance(v, str) and v and Path(v).is_file() else v)
        for k, v in options.items()
    }


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def feature_key(encoder_key: str, dataset_key: str, fraction: float, seed: int, pixels: dict | None = None) -> str:
    """The key of a feature file: the encoder's and the dataset split's content keys, the subset, the dtype,
    and the decode settings that change pixels (absent for the plain full-size decode)."""
    return digest(
        {
            "encoder": encoder_key,
            "dataset": dataset_key,
            "fraction": fraction,
            "seed": seed,
            "dtype": FEATURE_DTYPE,
            **({"pixels": pixels} if pixels else {}),
        }
    )


def feature_name(dataset: str, split: str, encoder: str, key: str) -> str:
    return f"{slug(dataset)}_{slug(split)}_{slug(encoder)}_{key}.h5"


def text_name(set_name: str, clip: str, key: str) -> str:
    return f"{slug(set_name)}_{slug(clip)}_{key}.h5"
