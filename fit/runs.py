"""One fit run, a dask task: its resolved spec in, a run folder (`zoomshot.cache.runs`) out, from
cached tensors only.

The task holds the run's lock, so two sweeps over the same grid fit each run once: the second waits
for the first, then finds the run finished. A folder whose files are damaged, whose inputs changed
since it was fitted, or whose method's revision changed since, is fitted again. A failed fit writes its
traceback to `<runs_dir>/<name>.failed.txt` (`failure_file`) and its status keeps one line.
"""

from __future__ import annotations

import sys
import time
import traceback
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from zoomshot.cache import faults, locks, runs, store, timestamps
from zoomshot.cache.compute import resolve_device
from zoomshot.cache.errors import PipelineError, refused_write
from zoomshot.cache.subsets import rows_of_subset

from .methods import fit_method


def load_pairs(pairs: list[dict], fraction: float) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Row-aligned (source, CLIP) features of the nested `fraction` of each training split."""
    s_parts, t_parts, provenance = [], [], []
    for p in pairs:
        src_path, clip_path = Path(p["source"]), Path(p["clip"])
        src_attrs = store.read_attrs_complete(src_path)
        extracted = float(src_attrs["fraction"])
        if fraction > extracted + 1e-12:
            raise PipelineError(
                f"fit fraction {fraction} is larger than the extracted fraction {extracted} "
                f"of {src_path.name}: extract a larger fraction or fit a smaller one"
            )
        with store.open_complete(src_path) as f:
            rows = rows_of_subset(f["index"][:], int(src_attrs["split_size"]), fraction, int(src_attrs["seed"]))
        src, clip = store.read_features_kept(src_path, rows), store.read_features_kept(clip_path, rows)
        store.check_same_rows(
            f"{src_path.name} and {clip_path.name}", src.index, clip.index, "extract them together again"
        )
        if len(rows) == 0:
            raise PipelineError(f"the {fraction} subset of {src_path.name} holds no rows")
        s_parts.append(src.features)
        t_parts.append(clip.features)
        provenance.append({"source": src_path.name, "clip": clip_path.name, "rows": int(len(rows))})
    for what, parts in (("source", s_parts), ("CLIP", t_parts)):
        if len({a.shape[1] for a in parts}) != 1:
            raise PipelineError(
                f"training splits of one run have different {what} widths {sorted({a.shape[1] for a in parts})}"
            )
    return np.concatenate(s_parts), np.concatenate(t_parts), provenance


def _prompts(path: str, clip_dim: int) -> torch.Tensor | None:
    if not path:
        return None
    u = store.read_text(Path(path)).embeddings
    if u.shape[1] != clip_dim:
        raise PipelineError(
            f"the class-free prompt embeddings ({Path(path).name}) are {u.shape[1]}-wide, the CLIP "
            f"image features {clip_dim}-wide: they come from different CLIP models"
        )
    return torch.from_numpy(u)


def input_files(spec: dict) -> list[Path]:
    return [Path(p) for pair in spec["pairs"] for p in pair.values()] + (
        [Path(spec["classfree"])] if spec["classfree"] else []
    )


def failure_file(run_dir: Path) -> Path:
    """Where a failed fit of this run leaves its full traceback (removed when the run is fitted)."""
    return run_dir.with_name(f"{run_dir.name}.failed.txt")


def _keep_traceback(run_dir: Path) -> str:
    """Write the exception being handled, with its traceback, to the run's failure file; its path, or a
    note saying why it could not be written."""
    path = failure_file(run_dir)
    try:
        path.write_text(traceback.format_exc())
    except OSError as e:
        return f"traceback not kept: {e.strerror or e}"
    return f"traceback: {path}"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def execute(spec: dict) -> dict:
    """Run one fit from its resolved spec; returns a one-line status dict. Never raises for a bad run
    (unless `spec["debug"]`) so a sweep goes on with the others; the error is in the status, its
    traceback in the run's failure file."""
    name, run_dir = spec["name"], Path(spec["run_dir"])
    try:
        with locks.holding([run_dir], _stderr):
            checksums = {p.name: store.stored_checksum(p) for p in input_files(spec)}
            reason = runs.stale_reason(run_dir, checksums, spec["record"]["revision"])
            if reason is None:
                return {"name": name, "status": "skipped"}
            if run_dir.exists():
                _stderr(f"re-fitting run {name}: {reason}")
            faults.point("fit.fitting")
            t0 = time.perf_counter()
            s, t, provenance = load_pairs(spec["pairs"], spec["record"]["fraction"])
            u = _prompts(spec["classfree"], t.shape[1])
            rec = spec["record"]
            device = resolve_device(spec["device"], "fit.device")
            maps, history = fit_method(
                rec["method"],
                torch.from_numpy(s),
                torch.from_numpy(t),
                u,
                dict(rec["params"]),
                rec["seed"],
                device,
                spec["threads"],
            )
            wall = time.perf_counter() - t0
            runs.write_run(
                run_dir,
                {
                    **rec,
                    "inputs": {"files": sorted(checksums), "checksums": checksums},
                    "train_files": provenance,
                    "rows": int(len(s)),
                    "fit_info": maps.fit,
                    "history": history,
                    "wall_time_s": round(wall, 4),
                    "device": device,
                    "threads": spec["threads"],
                    "versions": {
                        "torch": torch.__version__,
                        "numpy": np.__version__,
                        "project": version("zoomshot-pipeline"),
                    },
                    "created": timestamps.now(),
                },
                maps,
            )
            failure_file(run_dir).unlink(missing_ok=True)
        faults.point("fit.run_done")
        return {"name": name, "status": "done", "wall_time_s": round(wall, 3)}
    except Exception as e:  # one failing run is reported, the sweep goes on
        kept = _keep_traceback(run_dir)
        if spec.get("debug") or refused_write(e):  # a full disk ends the sweep: every other run would fail too
            raise
        msg = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
        first = msg.splitlines()[0] if msg.strip() else type(e).__name__
        return {"name": name, "status": "failed", "error": f"{first} ({kept})"}
