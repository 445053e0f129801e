"""The feature store: one HDF5 file per (dataset, split, encoder, settings), written through a
`.partial` file that is resumable and renamed atomically when complete (DESIGN.md section 3).

What is read is checked: every chunk carries HDF5's fletcher32 checksum (a flipped byte is an error,
not a wrong number), text embeddings carry a sha256 checked on every read, a file joined from shards
is only opened when every shard is there and complete, and `cache verify` re-hashes whole files.
Handles are never shared across processes: every function takes a path and opens it itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import timestamps
from .atomic import replacing
from .errors import PipelineError

SCHEMA_VERSION = 2  # 2: fletcher32 chunks, checksummed text, resume settings, shard checks
CHUNK_BYTES = 1 << 20
ROW_DATASETS = ("features", "index", "labels")


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _attr(value: Any) -> Any:
    """HDF5 attributes hold scalars and strings; anything structured is stored as JSON."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def sha256_rows(data: h5py.Dataset | np.ndarray) -> str:
    """Checksum of the rows' values in order, block by block (a dataset's memory stays bounded); an array
    gives the digest of the same values written to a dataset."""
    h = hashlib.sha256()
    step = max(1, (64 << 20) // max(1, data.dtype.itemsize * int(np.prod(data.shape[1:]))))
    for i in range(0, data.shape[0], step):
        h.update(np.ascontiguousarray(data[i : i + step]).tobytes())
    return h.hexdigest()


def locked(error: OSError) -> bool:
    """Whether HDF5 refused to open a file because another process holds its lock (a reader or a
    writer): the file is in use, not damaged."""
    return isinstance(error, BlockingIOError) or "unable to lock file" in str(error)


def lock_holders(path: Path) -> list[int]:
    """The processes holding an OS lock on `path` (Linux's /proc/locks; [] where it cannot tell)."""
    try:
        st = os.stat(path)
        table = Path("/proc/locks").read_text()
    except OSError:
        return []
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return sorted(
        {
            int(f[4])
            for f in map(str.split, table.splitlines())
            if len(f) > 5 and f[5] == inode and f[4].lstrip("-").isdigit() and int(f[4]) > 0
        }
    )


def busy(path: Path) -> PipelineError:
    pids = lock_holders(path)
    who = f" (pid {', '.join(map(str, pids))})" if pids else ""
    return PipelineError(
        f"{Path(path).name} is open in another process{who}: close it (or wait for it to end) and run the command again"
    )


def damaged(path: Path, error: Exception) -> PipelineError:
    if isinstance(error, OSError) and locked(error):
        return busy(path)
    return PipelineError(
        f"cache file {Path(path).name} is damaged ({str(error).splitlines()[0]}): remove it "
        f"(`pipeline cache rm {Path(path).name}`) and extract or import it again"
    )


def check_schema(path: Path, attrs: h5py.AttributeManager) -> None:
    found = attrs.get("schema_version")
    if found != SCHEMA_VERSION:
        raise PipelineError(
            f"{path.name} was written with cache schema {found}, this version reads schema {SCHEMA_VERSION}: "
            f"remove it (`pipeline cache rm {path.name}`) and extract again"
        )


#: Files whose writes failed (a full disk). HDF5 cannot close such a file: closing or freeing it
#: retries the failed flush, prints a traceback from a destructor, and can crash the process. They are
#: kept here, never closed, and the command exits without the interpreter's clean-up (`cli/main.py`).
_abandoned: list = []


FLOAT16_MAX = float(np.finfo(np.float16).max)


def check_storable(features: np.ndarray, what: str, fix: str) -> None:
    """One line, ending in `fix`, unless every value is finite and within float16's range (the cache's
    dtype): beyond it a value would be stored as inf and found only when read."""
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise PipelineError(
            f"{what} has {int(bad.sum())} row(s) with NaN or Inf (first: row {int(np.argmax(bad))}): {fix}"
        )
    if features.size and np.abs(features).max() > FLOAT16_MAX:
        raise PipelineError(f"{what} holds values beyond {FLOAT16_MAX:g}, which the float16 cache cannot keep: {fix}")


def writes_failed() -> bool:
    return bool(_abandoned)


class FeatureWriter:
    """Appends feature rows to `<target>.partial`; resumes from `rows_done`; `finish()` renames.

    Progress attributes (`rows_done`, `items_done`) are written after the rows they count and flushed,
    so a kill at any point leaves a file whose counted rows are exact; rows past `rows_done` are
    dropped on resume. A partial file is resumed only when its `resume` settings (batch size, device
    precision, preprocessing ...) equal the new ones and its counted rows read back with valid
    checksums; otherwise (other settings, a file torn by a full disk) it is started again. A resumed
    file ends bit-identical to an uninterrupted one. The caller holds the file's lock (`locks.holding`).
    """

    ROWS = ROW_DATASETS  # the datasets that grow batch by batch and are cut back to `rows_done`

    def __init__(
        self,
        target: Path,
        dim: int,
        attrs: dict,
        resume: dict,
        expected_rows: int = 0,
        say: Callable[[str], None] | None = None,
    ):
        self.expected_rows = expected_rows  # sizes chunks of small files; rows may still grow past it
        self.target = Path(target)
        self.partial = partial_path(self.target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.resume = json.loads(json.dumps({**resume, "dim": dim}, sort_keys=True, default=str))
        self.failed = False
        self.file = self._resumed(say) or self._create(attrs)
        # held open for the writer's life: a dataset closed after a failed write (a full disk) would
        # report the failure from a destructor instead of from `append`
        self.rows = {name: self.file[name] for name in self.ROWS}

    def _resumed(self, say: Callable[[str], None] | None) -> h5py.File | None:
        if not self.partial.exists():
            return None
        try:
            f = h5py.File(self.partial, "r+")
        except OSError as e:
            if locked(e):  # a reader has it open: resumable rows are never thrown away for that
                raise busy(self.partial) from None
            reason = f"it is damaged ({str(e).splitlines()[0]})"
        else:
            try:
                reason = self._why_not_resumable(f)
                if reason is None:
                    for name in self.ROWS:  # drop rows written after the last counted batch
                        if f[name].shape[0] != int(f.attrs["rows_done"]):
                            f[name].resize(int(f.attrs["rows_done"]), axis=0)
                    f.flush()
                    return f
            except (OSError, RuntimeError, ValueError, KeyError) as e:  # torn by a full disk ("addr overflow")
                reason = f"it is damaged ({str(e).splitlines()[0]})"
            try:
                f.close()
            except (OSError, RuntimeError):
                pass
        if say:
            say(f"starting {self.partial.name} again: {reason}")
        self.partial.unlink()
        return None

    def _why_not_resumable(self, f: h5py.File) -> str | None:
        try:
            if f.attrs.get("schema_version") != SCHEMA_VERSION:
                return f"it was written with cache schema {f.attrs.get('schema_version')}"
            before = json.loads(f.attrs["resume"])
            if before != self.resume:
                changed = sorted(k for k in {**before, **self.resume} if before.get(k) != self.resume.get(k))
                return (
                    "its settings differ ("
                    + ", ".join(f"{k}: {before.get(k)!r} -> {self.resume.get(k)!r}" for k in changed)
                    + ")"
                )
            rows = int(f.attrs["rows_done"])
            for name in self.ROWS:  # reading the counted rows checks every chunk's checksum
                if f[name].shape[0] < rows:
                    return f"{name} holds fewer rows than counted"
                f[name][:rows]
        except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError) as e:
            return f"it is damaged ({str(e).splitlines()[0]})"
        return None

    def _create(self, attrs: dict) -> h5py.File:
        f = h5py.File(self.partial, "w")
        rows_per_chunk = max(1, CHUNK_BYTES // (self.dim * 2))
        if self.expected_rows:
            rows_per_chunk = min(rows_per_chunk, self.expected_rows)
        f.create_dataset(
            "features",
            shape=(0, self.dim),
            maxshape=(None, self.dim),
            dtype="float16",
            chunks=(rows_per_chunk, self.dim),
            fletcher32=True,
        )
        for name in ("index", "labels"):
            f.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype="int64", chunks=(rows_per_chunk,), fletcher32=True
            )
        for k, v in attrs.items():
            f.attrs[k] = _attr(v)
        f.attrs.update(
            {
                "schema_version": SCHEMA_VERSION,
                "dim": self.dim,
                "resume": _attr(self.resume),
                "batch_size": self.resume.get("batch_size", 0),
                "rows_done": 0,
                "items_done": 0,
                "complete": False,
                "created": timestamps.now(),
                "bad_items": "[]",
            }
        )
        f.flush()
        return f

    @property
    def rows_done(self) -> int:
        return int(self.file.attrs["rows_done"])

    @property
    def items_done(self) -> int:
        """Subset items consumed, including skipped bad ones: where extraction resumes."""
        return int(self.file.attrs["items_done"])

    @property
    def bad_items(self) -> list[int]:
        return json.loads(self.file.attrs["bad_items"])

    def append(
        self, features: np.ndarray, index: np.ndarray, labels: np.ndarray, items: int, bad: list[int] | None = None
    ) -> None:
        """Write one batch: `items` subset items were consumed, `len(features)` of them kept."""
        check_storable(
            features,
            self._describe(),
            "check the encoder's weights and input normalisation; nothing of this batch was written",
        )
        self._write(
            {"features": features.astype(np.float16), "index": index, "labels": labels},
            {
                **({"bad_items": json.dumps(self.bad_items + list(map(int, bad)))} if bad else {}),
                "items_done": self.items_done + items,
            },
        )

    def _write(self, rows: dict[str, np.ndarray], counts: dict) -> None:
        """Append `rows` to the row datasets and flush, then count them (`rows_done`, `counts`) and flush."""
        n0, n = self.rows_done, len(next(iter(rows.values())))
        f = self.file
        try:
            for name, data in rows.items():
                self.rows[name].resize(n0 + n, axis=0)
                self.rows[name][n0 : n0 + n] = data
            f.flush()
            f.attrs.update({"rows_done": n0 + n, **counts})
            f.flush()
        except (OSError, RuntimeError) as e:
            self._abandon()
            raise PipelineError(
                f"cannot write {self.partial.name} ({str(e).splitlines()[0]}; is the disk "
                f"full?): free space and run the same command again to resume"
            ) from None

    def _describe(self) -> str:
        """Whose rows these are, for an error line: the encoder and split where the file records them."""
        a = self.file.attrs
        if all(k in a for k in ("encoder", "dataset", "split")):
            return f"encoder {a['encoder']!r} on {a['dataset']}:{a['split']}"
        return self.target.name

    def finish(self, extra_attrs: dict | None = None) -> Path:
        """Checksum the rows, mark the file complete, rename it into place."""
        f = self.file
        for k, v in {**(extra_attrs or {}), **self._checksums()}.items():
            f.attrs[k] = _attr(v)
        f.attrs["complete"] = True
        self.rows = {}
        f.close()
        os.replace(self.partial, self.target)
        return self.target

    def _checksums(self) -> dict:
        return {"bad_count": len(self.bad_items), "features_sha256": sha256_rows(self.rows["features"])}

    def _abandon(self) -> None:
        """After a failed write the file cannot be flushed or closed (see `_abandoned`); the next run
        checks it and starts it again if it is torn."""
        self.failed = True
        _abandoned.append((self.file, self.rows))

    def close(self) -> None:
        """Close without finishing (an interruption): the file stays resumable."""
        if not self.failed and self.file.id.valid:
            self.rows = {}
            self.file.close()


@dataclass
class FeatureFile:
    """A complete feature file read into memory (float32), with its provenance."""

    path: Path
    features: np.ndarray
    index: np.ndarray
    labels: np.ndarray
    attrs: dict


def check_same_rows(what: str, index: np.ndarray, other_index: np.ndarray, fix: str = "extract them together") -> None:
    """One line unless two files hold the same dataset rows in the same order (equal `index` datasets): fit
    pairs row i of one with row i of the other, evaluate scores them side by side. `what` names both files."""
    if not np.array_equal(index, other_index):
        raise PipelineError(f"{what} hold different rows (other subsets, or images skipped as unreadable): {fix}")


def _attrs_dict(attrs: h5py.AttributeManager) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}


def read_attrs(path: Path) -> dict:
    """Provenance of any cache file, finished or not (for `pipeline cache info`)."""
    try:
        with h5py.File(path, "r") as f:
            return _attrs_dict(f.attrs)
    except OSError as e:
        raise damaged(path, e) from None


def shard_problems(path: Path, attrs: dict) -> list[str]:
    """For a file joined from shards (an HDF5 virtual dataset): every shard that is missing or not
    complete. HDF5 would read a missing shard's rows as zeros, so such a file is never read."""
    problems = []
    for name in json.loads(attrs.get("shards", "[]")):
        shard = Path(path).parent / name
        if not shard.exists():
            problems.append(f"shard {name} is missing")
            continue
        try:
            shard_attrs = read_attrs(shard)
        except PipelineError as e:
            problems.append(str(e))
            continue
        if not shard_attrs.get("complete") or shard_attrs.get("schema_version") != SCHEMA_VERSION:
            problems.append(f"shard {name} is not complete")
    return problems


def open_complete(path: Path) -> h5py.File:
    """Open a finished file for reading; the caller closes it (use as a context manager)."""
    path = Path(path)
    if not path.exists():
        hint = (
            " (an interrupted extraction: run `pipeline extract` again to resume it)"
            if partial_path(path).exists()
            else " (run `pipeline extract` first)"
        )
        raise PipelineError(f"cache file {path} does not exist{hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise damaged(path, e) from None
    try:
        check_schema(path, f.attrs)
        if not f.attrs.get("complete", False):
            raise PipelineError(f"cache file {path.name} is not complete; run `pipeline extract` again")
        if problems := shard_problems(path, _attrs_dict(f.attrs)):
            raise PipelineError(
                f"cache file {path.name} is joined from shards and {problems[0]}: extract it "
                f"again (`pipeline cache rm {path.name}`, then `pipeline extract`)"
            )
    except BaseException:
        f.close()
        raise
    return f


def read_attrs_complete(path: Path) -> dict:
    with open_complete(path) as f:
        return _attrs_dict(f.attrs)


def read_rows(path: Path, f: h5py.File, sel: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """features (float32), index, labels of the selected rows, checked: chunk checksums and finiteness."""
    try:
        feats = f["features"][sel].astype(np.float32)
        index, labels = f["index"][sel], f["labels"][sel]
    except (OSError, KeyError) as e:
        raise damaged(path, e) from None
    if not np.isfinite(feats).all():
        raise PipelineError(
            f"{Path(path).name} holds NaN or Inf features; remove it (`pipeline cache rm`) "
            f"and extract again, or fix the file you imported"
        )
    return feats, index, labels


def read_features(path: Path, rows: np.ndarray | None = None) -> FeatureFile:
    """Whole file or the given (ascending) rows, as float32."""
    with open_complete(path) as f:
        feats, index, labels = read_rows(path, f, slice(None) if rows is None else np.asarray(rows))
        attrs = _attrs_dict(f.attrs)
    return FeatureFile(Path(path), feats, index, labels, attrs)


@lru_cache(maxsize=4)
def _whole_file(path: str, size: int, mtime_ns: int) -> FeatureFile:
    return read_features(Path(path))


_whole_guard = threading.Lock()


def read_features_kept(path: Path, rows: np.ndarray) -> FeatureFile:
    """`read_features(path, rows)` sliced from the whole file, read once per process and kept (the last
    four files): the runs of a sweep on one worker share one read instead of one read each. Keyed by the
    file's size and mtime, so a replaced file is read again."""
    st = os.stat(path)
    with _whole_guard:  # the sweep's threads wait for the one read instead of each making it
        whole = _whole_file(str(path), st.st_size, st.st_mtime_ns)
    rows = np.asarray(rows)
    return FeatureFile(whole.path, whole.features[rows], whole.index[rows], whole.labels[rows], whole.attrs)


@dataclass
class TextEmbeddings:
    """Per-prompt CLIP text embeddings; class embeddings are derived at evaluation time."""

    embeddings: np.ndarray  # (K, d) float32
    prompts: list[str]
    class_of_prompt: np.ndarray  # (K,) int64, -1 for class-free prompt sets
    classnames: list[str]
    attrs: dict


def _create_text(
    f: h5py.File, dim: int, prompts: list[str], class_of_prompt: np.ndarray, classnames: list[str], attrs: dict
) -> None:
    """A text file's layout with no embedding row yet: the prompts, their classes and the class names
    whole, `embeddings` growing along rows in checksummed chunks."""
    rows_per_chunk = max(1, min(CHUNK_BYTES // (dim * 4), len(prompts)))
    f.create_dataset(
        "embeddings",
        shape=(0, dim),
        maxshape=(None, dim),
        dtype="float32",
        chunks=(rows_per_chunk, dim),
        fletcher32=True,
    )
    str_dt = h5py.string_dtype()
    f.create_dataset("prompts", data=np.array(prompts, dtype=object), dtype=str_dt)
    f.create_dataset("class_of_prompt", data=np.asarray(class_of_prompt, dtype=np.int64))
    f.create_dataset("classnames", data=np.array(classnames, dtype=object), dtype=str_dt)
    for k, v in attrs.items():
        f.attrs[k] = _attr(v)
    f.attrs.update({"schema_version": SCHEMA_VERSION, "dim": dim, "created": timestamps.now(), "complete": False})


def write_text(path: Path, emb: TextEmbeddings) -> Path:
    """Embeddings computed elsewhere (`cache import`): written whole, then renamed into place."""
    if not np.isfinite(emb.embeddings).all():
        raise PipelineError(f"non-finite text embeddings for {Path(path).name}")
    with replacing(Path(path)) as tmp, h5py.File(tmp, "w") as f:
        _create_text(f, emb.embeddings.shape[1], emb.prompts, emb.class_of_prompt, emb.classnames, emb.attrs)
        f["embeddings"].resize(len(emb.embeddings), axis=0)
        f["embeddings"][:] = emb.embeddings.astype(np.float32)
        f.attrs.update({"embeddings_sha256": sha256_rows(emb.embeddings.astype(np.float32)), "complete": True})
    return Path(path)


class TextWriter(FeatureWriter):
    """Writes a prompt set's embeddings batch by batch into `<target>.partial` (encoding ImageNet's
    80,000 prompts takes a while): the feature writer's resume, `rows_done` and atomic rename, over the one
    row dataset `embeddings`. `resume` must name what changes the numbers (CLIP, precision, batch size,
    prompts)."""

    ROWS = ("embeddings",)

    def __init__(
        self,
        target: Path,
        dim: int,
        prompts: list[str],
        class_of_prompt: np.ndarray,
        classnames: list[str],
        attrs: dict,
        resume: dict,
        say: Callable[[str], None] | None = None,
    ):
        self.prompts, self.class_of_prompt, self.classnames = prompts, class_of_prompt, classnames
        super().__init__(target, dim, attrs, resume, len(prompts), say)

    def _create(self, attrs: dict) -> h5py.File:
        f = h5py.File(self.partial, "w")
        _create_text(f, self.dim, self.prompts, self.class_of_prompt, self.classnames, attrs)
        f.attrs.update({"resume": _attr(self.resume), "rows_done": 0})
        f.flush()
        return f

    def append(self, embeddings: np.ndarray) -> None:
        """Write the embeddings of the next prompts."""
        if not np.isfinite(embeddings).all():
            raise PipelineError(f"non-finite text embeddings produced for {self.target.name}: check the CLIP weights")
        self._write({"embeddings": embeddings.astype(np.float32)}, {})

    def _checksums(self) -> dict:
        """The same digest `write_text` stores (sha256 of all float32 rows in order), read back in blocks."""
        return {"embeddings_sha256": sha256_rows(self.rows["embeddings"])}


def _strings(data: h5py.Dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else s for s in data[:]]


def read_text(path: Path) -> TextEmbeddings:
    with open_complete(path) as f:
        try:
            emb = TextEmbeddings(
                embeddings=f["embeddings"][:].astype(np.float32),
                prompts=_strings(f["prompts"]),
                class_of_prompt=f["class_of_prompt"][:],
                classnames=_strings(f["classnames"]),
                attrs=_attrs_dict(f.attrs),
            )
        except (OSError, KeyError) as e:
            raise damaged(path, e) from None
    if sha256_rows(emb.embeddings) != emb.attrs.get("embeddings_sha256"):
        raise damaged(path, ValueError("the embeddings' checksum does not match"))
    if not np.isfinite(emb.embeddings).all():
        raise PipelineError(f"{Path(path).name} holds NaN or Inf text embeddings; remove it and extract again")
    return emb


def stored_checksum(path: Path) -> str:
    """The checksum a complete file's numbers (feature rows or text embeddings) were written with, as stored:
    nothing is read or recomputed (`catalog.verify` recomputes it)."""
    attrs = read_attrs_complete(path)
    return str(attrs.get("features_sha256") or attrs.get("embeddings_sha256"))
