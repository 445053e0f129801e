"""The run folder contract, written by `fit` and read by `evaluate` (and anything else):

    <runs_dir>/<name>/maps.safetensors   h, h_inv and the two variance scales (`Maps`)
    <runs_dir>/<name>/run.json           the fully resolved settings, the inputs by content, losses, provenance

A run's name is the hash of everything that changes its numbers: the resolved method settings, the
subset, the seed, and the content keys of its input files (never their paths), so a moved or copied
runs folder is still found finished. A folder counts as finished only when both files read back with
their checksums (run.json holds `record_sha256`, a digest of its own content with sorted keys, so an edit
of it is a stale run, never believed; and `maps_sha256`, that of the maps file), its inputs still hold
the numbers it was fitted on, and it was fitted by the method's current revision (run.json `revision`;
a new revision re-fits the folder in place rather than naming a new one, so a runs folder never holds
results of two versions of one method's maths side by side).
A run that failed leaves `<name>.failed.txt` beside the folders: its full traceback.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import keys
from .atomic import replacing
from .errors import PipelineError

RUN_FILE, MAPS_FILE = "run.json", "maps.safetensors"
RECORD_FIELDS = (
    "name",
    "variant",
    "method",
    "params",
    "encoder",
    "encoder_key",
    "clip",
    "clip_key",
    "fraction",
    "epochs",
    "seed",
    "train",
    "inputs",
    "maps_sha256",
    "record_sha256",
)


class DamagedRun(PipelineError):
    """A run folder whose files are missing or damaged; `what` says which, without the advice."""

    def __init__(self, run: str, what: str):
        super().__init__(f"run {run}: {what}: fit it again (`pipeline fit`)")
        self.what = what


def run_name(identity: dict) -> str:
    return keys.digest(identity)


@dataclass
class Maps:
    """h and h_inv as weights in the variance-aligned spaces plus the two scalars that lead into them.

    h_weight (d, m), h_bias (d,), hinv_weight (m, d), hinv_bias (m,). In raw feature units
    h(s) = ((s * scale_source) @ h_weight.T + h_bias) / scale_clip, and h_inv likewise the other way.
    """

    h_weight: torch.Tensor
    h_bias: torch.Tensor
    hinv_weight: torch.Tensor
    hinv_bias: torch.Tensor
    scale_source: float
    scale_clip: float
    fit: dict = field(default_factory=dict, compare=False)  # how it was fitted (run.json `fit_info`)

    def __post_init__(self) -> None:
        d, m = self.h_weight.shape
        shapes = {"h_bias": (d,), "hinv_weight": (m, d), "hinv_bias": (m,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        self.scale_source = float(self.scale_source)
        self.scale_clip = float(self.scale_clip)

    @property
    def source_dim(self) -> int:
        return int(self.h_weight.shape[1])

    @property
    def clip_dim(self) -> int:
        return int(self.h_weight.shape[0])

    def to_clip(self, s_raw: torch.Tensor) -> torch.Tensor:
        """Map raw source features (..., m) to raw-unit CLIP features (..., d), on the weights' device."""
        x = s_raw.to(self.h_weight) * self.scale_source
        return (x @ self.h_weight.T + self.h_bias) / self.scale_clip

    def to_source(self, t_raw: torch.Tensor) -> torch.Tensor:
        """Map raw CLIP features (..., d) to raw-unit source features (..., m), on the weights' device."""
        x = t_raw.to(self.hinv_weight) * self.scale_clip
        return (x @ self.hinv_weight.T + self.hinv_bias) / self.scale_source

    def to(self, device: str | torch.device) -> Maps:
        """A copy whose weights live on `device` (where `to_clip` / `to_source` then compute)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in moved.items() if isinstance(v, torch.Tensor)})

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write a safetensors file; scales are stored as float64 scalars so a reload is bit-exact."""
        tensors = {
            "h.weight": self.h_weight,
            "h.bias": self.h_bias,
            "h_inv.weight": self.hinv_weight,
            "h_inv.bias": self.hinv_bias,
            "scale_source": torch.tensor(self.scale_source, dtype=torch.float64),
            "scale_clip": torch.tensor(self.scale_clip, dtype=torch.float64),
        }
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> Maps:
        """Read a file written by `save` onto the CPU (metadata: `safetensors.safe_open(path, "pt").metadata()`)."""
        with safe_open(str(path), framework="pt", device="cpu") as f:
            get = f.get_tensor
            return cls(
                h_weight=get("h.weight"),
                h_bias=get("h.bias"),
                hinv_weight=get("h_inv.weight"),
                hinv_bias=get("h_inv.bias"),
                scale_source=get("scale_source").item(),
                scale_clip=get("scale_clip").item(),
            )


def record_digest(record: dict) -> str:
    """The sha256 of a run record without its own `record_sha256`, as JSON with sorted keys (so it is
    the same for the record written and the record read back)."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Run:
    """A finished run folder whose record has been read and checked."""

    dir: Path
    record: dict

    @property
    def name(self) -> str:
        return self.dir.name

    def maps(self) -> Maps:
        """The maps, after checking the file against the checksum in run.json."""
        path = self.dir / MAPS_FILE
        if not path.is_file():
            raise DamagedRun(self.name, f"{MAPS_FILE} is missing")
        if keys.file_sha256(path) != self.record["maps_sha256"]:
            raise DamagedRun(self.name, f"{MAPS_FILE} is damaged (its checksum does not match run.json)")
        try:
            return Maps.load(path)
        except Exception as e:  # safetensors raises its own error types for a torn file
            raise DamagedRun(self.name, f"cannot read {MAPS_FILE} ({e})") from None


def read_run(run_dir: Path) -> Run:
    """The run folder's record, checked; one clear PipelineError for a missing or damaged run.json."""
    path, name = Path(run_dir) / RUN_FILE, Path(run_dir).name
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedRun(name, f"{RUN_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedRun(name, f"{RUN_FILE} is damaged ({e})") from None
    missing = [k for k in RECORD_FIELDS if k not in record] if isinstance(record, dict) else list(RECORD_FIELDS)
    if missing:
        raise DamagedRun(name, f"{RUN_FILE} lacks {', '.join(missing)} (written by an older version, or damaged)")
    if record_digest(record) != record["record_sha256"]:
        raise DamagedRun(name, f"{RUN_FILE} was changed after the fit (its content does not match its record_sha256)")
    return Run(Path(run_dir), record)


def stale_reason(run_dir: Path, input_checksums: dict[str, str], revision: int) -> str | None:
    """Why `run_dir` does not hold this run finished (None when it does): missing or damaged files,
    inputs that changed since it was fitted (a re-imported or re-extracted cache file), or a method whose
    maths changed since (its `revision`)."""
    if not Path(run_dir).exists():
        return "not fitted yet"
    try:
        run = read_run(run_dir)
        run.maps()
    except DamagedRun as e:
        return e.what
    if run.record["inputs"].get("checksums") != input_checksums:
        return "its input files changed since it was fitted"
    if run.record.get("revision") != revision:
        return (
            f"it was fitted by revision {run.record.get('revision', 'none')} of method {run.record['method']}, "
            f"which is now at revision {revision}"
        )
    return None


def write_run(run_dir: Path, record: dict, maps: Maps) -> Path:
    """Write both files into a temporary folder and rename it into place (an older, stale folder of the
    same name is replaced; the caller holds the run's lock)."""
    run_dir = Path(run_dir)
    with replacing(run_dir) as tmp:
        tmp.mkdir()
        maps.save(tmp / MAPS_FILE, {"run": run_dir.name, "method": str(record.get("method", ""))})
        record = json.loads(json.dumps({**record, "maps_sha256": keys.file_sha256(tmp / MAPS_FILE)}, default=str))
        record["record_sha256"] = record_digest(record)
        (tmp / RUN_FILE).write_text(json.dumps(record, indent=1, default=str))
        if run_dir.exists():
            shutil.rmtree(run_dir)
    return run_dir


def run_dirs(runs_dir: Path, names: list[str] | None = None) -> list[Path]:
    """The run folders under `runs_dir` (all, or the named ones, which must exist)."""
    found = sorted(p for p in Path(runs_dir).glob("*") if p.is_dir() and not p.name.startswith("."))
    if names:
        missing = set(names) - {p.name for p in found}
        if missing:
            raise PipelineError(f"no run named {', '.join(sorted(missing))} under {runs_dir}")
        found = [p for p in found if p.name in names]
    return found
