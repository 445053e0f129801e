"""Figures of a report (DESIGN.md section 6): PNG files drawn from already-loaded results and run records.

Every function here takes data, writes one PNG (matplotlib's non-interactive Agg backend, dpi 120) and
closes its figure; `write_plots` draws all that the results support:

* `acc_vs_fraction_<dataset>.png`: top-1 (%) against data fraction, one panel per encoder, one line per
  variant (mean over seeds, std error bars), CLIP's top-1 dashed (the ceiling); only when fractions vary;
* `acc_vs_epochs_<dataset>.png`: the same against epochs, for methods trained by epochs; only when they vary;
* `loss_curves.png`: total training loss per epoch (log y) of every result's run, one panel per encoder;
* `projection_<dataset>.png`: a 2-D PCA of L2-normalised feature groups, which shows the modality gap.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402

from zoomshot.cache import atomic  # noqa: E402
from zoomshot.cache.errors import PipelineError  # noqa: E402
from zoomshot.cache.runs import read_run  # noqa: E402

from .report import CLIP, summary_rows  # noqa: E402

DPI = 120
PANEL_SIZE = (4.2, 3.4)
SWEEP_FIELDS = ("fraction", "epochs")


# ---- small shared pieces -------------------------------------------------------------------------

def _panels(n: int, title: str) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(PANEL_SIZE[0] * n, PANEL_SIZE[1]), squeeze=False)
    fig.suptitle(title)
    return fig, list(axes[0])


def _save(fig: plt.Figure, path: Path) -> Path:
    """Written atomically, like every output: a reader never sees half a PNG."""
    path = Path(path)
    fig.tight_layout()
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip("."))
    plt.close(fig)
    return path


def _pct(value: float) -> float:
    return 100.0 * value


# ---- accuracy against a sweep axis (fraction or epochs) ------------------------------------------

def _line_label(row: dict[str, Any], other: str | None) -> str:
    """The variant, plus the other sweep axis when it varies too (so no line mixes two settings)."""
    return row["variant"] if other is None or row[other] is None else f"{row['variant']} ({other}={row[other]})"


def _sweep_rows(rows: list[dict[str, Any]], x_field: str) -> list[dict[str, Any]]:
    """Student rows with a value on `x_field` (baselines have no epochs)."""
    return [r for r in rows if r["method"] != CLIP and r[x_field] is not None]


def _x_values(rows: list[dict[str, Any]], x_field: str) -> list:
    return sorted({r[x_field] for r in _sweep_rows(rows, x_field)})


def _draw_lines(ax: plt.Axes, rows: list[dict[str, Any]], x_field: str, other: str | None) -> None:
    lines: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r[x_field]):
        lines.setdefault(_line_label(row, other), []).append(row)
    for label, members in sorted(lines.items()):
        xs = [r[x_field] for r in members]
        ys = [_pct(r["acc1_mean"]) for r in members]
        err = [_pct(r["acc1_std"]) if r["n_seeds"] > 1 and not math.isnan(r["acc1_std"]) else 0.0
               for r in members]
        ax.errorbar(xs, ys, yerr=err if any(err) else None, marker="o", capsize=3, label=label)


def _draw_ceiling(ax: plt.Axes, clip_rows: list[dict[str, Any]]) -> None:
    for row in clip_rows:
        if not math.isnan(row["acc1_mean"]):
            ax.axhline(_pct(row["acc1_mean"]), color="black", linestyle="--", linewidth=1,
                       label=f"CLIP ({row['encoder']})")


def plot_accuracy_vs(rows: list[dict[str, Any]], x_field: str, out_path: Path, title: str) -> Path:
    """Top-1 (%) against `x_field` ("fraction" or "epochs") from `summary_rows` of one dataset:
    one panel per encoder, one line per variant, CLIP's top-1 as a dashed line in every panel."""
    students = _sweep_rows(rows, x_field)
    clip_rows = [r for r in rows if r["method"] == CLIP]
    others = [f for f in SWEEP_FIELDS if f != x_field and len({r[f] for r in students}) > 1]
    other = others[0] if others else None
    encoders = sorted({r["encoder"] for r in students})
    fig, axes = _panels(len(encoders), title)
    for ax, encoder in zip(axes, encoders):
        _draw_lines(ax, [r for r in students if r["encoder"] == encoder], x_field, other)
        _draw_ceiling(ax, clip_rows)
        ax.set_title(encoder)
        ax.set_xlabel(x_field)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, out_path)


# ---- training-loss curves ------------------------------------------------------------------------

def load_histories(results: list[dict[str, Any]], runs_dir: Path) -> list[dict[str, Any]]:
    """run.json of every run the results name (once each), when it has a per-epoch history (> 1 epoch)."""
    records, seen = [], set()
    for name in (r.get("run") for r in results if r.get("method") != CLIP):
        if not name or name in seen:
            continue
        seen.add(name)
        if not (Path(runs_dir) / name).is_dir():
            continue
        try:
            record = read_run(Path(runs_dir) / name).record
        except PipelineError as err:
            warnings.warn(f"no loss curve of run {name}: {err}", stacklevel=2)
            continue
        if len(record.get("history") or []) > 1:
            records.append(record)
    return records


def plot_loss_curves(records: list[dict[str, Any]], out_path: Path, title: str = "training loss") -> Path:
    """Total loss per epoch of each run record: one panel per encoder, one colour per variant/fraction
    (seeds of the same setting share it); log y when every loss is positive."""
    encoders = sorted({r["encoder"] for r in records})
    fig, axes = _panels(len(encoders), title)
    for ax, encoder in zip(axes, encoders):
        mine = sorted((r for r in records if r["encoder"] == encoder),
                      key=lambda r: (r["variant"], r["fraction"], r.get("seed", 0)))
        colours: dict[str, str] = {}
        positive = True
        for record in mine:
            label = f"{record['variant']} f={record['fraction']}"
            epochs = [h["epoch"] for h in record["history"]]
            totals = [h["total"] for h in record["history"]]
            positive &= all(t > 0 for t in totals)
            first = label not in colours
            colour = colours.setdefault(label, f"C{len(colours) % 10}")
            ax.plot(epochs, totals, color=colour, linewidth=1.2, label=label if first else None)
        ax.set_yscale("log" if positive else "linear")
        ax.set_title(encoder)
        ax.set_xlabel("epoch")
        ax.set_ylabel("total loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    return _save(fig, out_path)


# ---- 2-D projection of feature groups (the modality gap) -----------------------------------------

def _normalise(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"each group must be a 2-D (n, d) array, got shape {a.shape}")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _pca(arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Coordinates on the first two principal components of the union of L2-normalised rows, per group,
    and the share of variance each component explains. Signs are fixed (largest loading positive)."""
    groups = [_normalise(a) for a in arrays]
    widths = {g.shape[1] for g in groups}
    if len(widths) != 1:
        raise ValueError(f"all groups must have the same width, got {sorted(widths)}")
    union = np.concatenate(groups)
    mean = union.mean(axis=0)
    _, sing, vt = np.linalg.svd(union - mean, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    if len(comps) < 2:  # a single-row or one-wide union has fewer than two components
        comps = np.vstack([comps, np.zeros((2 - len(comps), union.shape[1]))])
    var = sing ** 2
    ratio = np.zeros(2)
    ratio[: min(2, len(var))] = (var / var.sum())[:2] if var.sum() > 0 else 0.0
    return [(g - mean) @ comps.T for g in groups], ratio


def pca_2d(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each (n_i, d) group as (n_i, 2) coordinates on the top two principal components of the union of
    all L2-normalised rows (PCA by numpy SVD)."""
    return _pca(arrays)[0]


def projection_plot(points: Mapping[str, np.ndarray], out_path: Path, title: str,
                    max_points: int = 4000) -> Path:
    """Scatter of `points` (label -> (n_i, d) features) on a 2-D PCA fitted to all of them, one colour
    per group. At most `max_points` of a group are drawn (an even stride); the PCA uses every row."""
    labels = list(points)
    coords, ratio = _pca([points[k] for k in labels])
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    for i, (label, xy) in enumerate(zip(labels, coords)):
        step = max(1, math.ceil(len(xy) / max_points))
        ax.scatter(xy[::step, 0], xy[::step, 1], s=6, alpha=0.6, color=f"C{i % 10}",
                   label=f"{label} (n={len(xy)})")
    ax.set_title(title)
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% var.)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% var.)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", markerscale=2)
    return _save(fig, out_path)


# ---- everything at once ------------------------------------------------------------------------------

def _projection_sets(projection: Mapping, datasets: list[str]) -> dict[str, Mapping[str, np.ndarray]]:
    """`projection` is either label -> array (named after the results' dataset, or "all" when they hold
    several) or dataset -> (label -> array)."""
    if projection and all(isinstance(v, Mapping) for v in projection.values()):
        return dict(projection)
    return {datasets[0] if len(datasets) == 1 else "all": projection}


def write_plots(results: list[dict[str, Any]], runs_dir: Path, out_dir: Path,
                projection: dict | None = None) -> list[Path]:
    """Every figure the results support, written into out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    rows = summary_rows(results)
    datasets = sorted({r["dataset"] for r in rows})
    written = []
    for dataset in datasets:
        mine = [r for r in rows if r["dataset"] == dataset]
        for x_field in SWEEP_FIELDS:
            if len(_x_values(mine, x_field)) > 1:
                written.append(plot_accuracy_vs(mine, x_field, out_dir / f"acc_vs_{x_field}_{dataset}.png",
                                                f"{dataset}: top-1 against {x_field}"))
    records = load_histories(results, runs_dir)
    if records:
        written.append(plot_loss_curves(records, out_dir / "loss_curves.png"))
    for name, points in _projection_sets(projection or {}, datasets).items():
        if points:
            written.append(projection_plot(points, out_dir / f"projection_{name}.png",
                                           f"{name}: modality gap (PCA of L2-normalised features)"))
    return written
