"""Figures of a report, each answering one question, sized for a paper (DESIGN.md section 6).

Builders take data and return a matplotlib Figure (the tests inspect those); `write_plots` saves each as
PNG and PDF and closes it:

* `acc_vs_<fraction|epochs>_<dataset>`: top-1 against the training fraction (epochs), one panel per
  encoder on a shared y axis, at most `MAX_SERIES` series a figure (baselines and loss sets, zero-shot;
  `_part<k>` when there are more), mean ± std over seeds, CLIP's zero-shot top-1 as a reference line,
  the legend outside the axes;
* `acc_vs_<...>_<dataset>_<adapter>`: the same for each training-free adapter, with CLIP + adapter as a
  second reference;
* `loss_terms_<encoder>`: every loss term per epoch (a panel each) of the chosen runs;
* `modality_gap_<dataset>`: CLIP's image and class-text features and the mapped encoder features on a
  2-D PCA fitted on CLIP's image and text features alone, the measured gaps in the legend;
* `per_class_<dataset>`: each mapped encoder's top-1 per class against CLIP (at 1,000 classes the 10
  lost most and the 10 best), where the results hold per-class accuracy (`[evaluate] per_class`).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402

from zoomshot.cache import atomic  # noqa: E402
from zoomshot.cache.errors import PipelineError  # noqa: E402
from zoomshot.cache.keys import slug  # noqa: E402
from zoomshot.cache.runs import read_run  # noqa: E402

from .gap import GapView  # noqa: E402
from .report import summary_rows  # noqa: E402
from .tables import adapter_label  # noqa: E402

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
FULL_WIDTH = 7.0  # both columns
MAX_SERIES = 8  # lines a panel can show and still be told apart
PER_CLASS_SHOWN = 10  # classes at each end of a per-class panel (best and worst)
NAME_CHARS = 28  # a class name longer than this is cut beside its bar
DPI = 200
STYLE = {
    "font.size": 7,
    "axes.titlesize": 8,
    "axes.labelsize": 7,
    "legend.fontsize": 6.5,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "figure.titlesize": 8,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
SWEEP_FIELDS = ("fraction", "epochs")
AXIS_LABELS = {"fraction": "training fraction (%)", "epochs": "epochs"}
TERMS = ("total", "mse", "cyc_s", "cyc_t", "cyc_u", "kd", "ridge")
TERM_TITLES = {
    "total": "total",
    "mse": "L_mse",
    "cyc_s": "cycle (image, source)",
    "cyc_t": "cycle (image, CLIP)",
    "cyc_u": "cycle (text)",
    "kd": "PG-KD",
    "ridge": "ridge penalty",
}
CLIP_LINE = {"color": "black", "linestyle": "--", "linewidth": 1.0}
ADAPTED_CLIP_LINE = {"color": "dimgray", "linestyle": ":", "linewidth": 1.2}


# ---- figure scaffolding ----------------------------------------------------------------------------


def styled(build: Callable[..., plt.Figure]) -> Callable[..., plt.Figure]:
    """Build the figure inside the paper style (fonts, line widths): text takes its size when drawn."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs) -> plt.Figure:
        with plt.rc_context(STYLE):
            return build(*args, **kwargs)

    return wrapper


def _figure(
    n_panels: int, height: float = 2.3, ncols: int | None = None, sharey: bool = True
) -> tuple[plt.Figure, list[plt.Axes]]:
    ncols = min(n_panels, ncols or n_panels)
    nrows = math.ceil(n_panels / ncols)
    width = min(FULL_WIDTH, max(COLUMN_WIDTH, 2.2 * ncols + 1.4))  # + room for the legend at the right
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width, height * nrows), sharey=sharey, squeeze=False, layout="constrained"
    )
    flat = list(axes.flat)
    for extra in flat[n_panels:]:
        extra.remove()
    return fig, flat[:n_panels]


def _legend_outside(fig: plt.Figure, axes: Sequence[plt.Axes], below: bool = False) -> None:
    """One legend for all panels, right of them or below (constrained layout makes room for it)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen),
            loc="outside lower center" if below else "outside right center",  # clear of the title
            frameon=False,
            markerscale=2 if below else 1,
        )


def _save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """PNG (for screens) and PDF (for papers), each written atomically; the figure is closed."""
    paths = []
    for ext in ("png", "pdf"):
        path = Path(out_dir) / f"{stem}.{ext}"
        with atomic.replacing(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format=ext)
        paths.append(path)
    plt.close(fig)
    return paths


def _pct(value: float) -> float:
    return 100.0 * value


# ---- accuracy against a sweep axis ------------------------------------------------------------------


@dataclass
class Sweep:
    """The summary rows of one dataset that a sweep figure draws."""

    x_field: str
    series: dict[str, list[dict[str, Any]]]  # label -> rows (across encoders and x values)
    references: dict[str, float]  # label -> top-1 drawn as a horizontal line
    title: str


def _reference_style(label: str) -> dict:
    return CLIP_LINE if label == "CLIP zero-shot" else ADAPTED_CLIP_LINE


@styled
def accuracy_figure(sweep: Sweep) -> plt.Figure:
    """Top-1 (%) against `sweep.x_field`, one panel per encoder, shared y, references in every panel."""
    encoders = sorted({r["encoder"] for rows in sweep.series.values() for r in rows})
    fig, axes = _figure(len(encoders))
    xs = sorted({r[sweep.x_field] for rows in sweep.series.values() for r in rows})
    for ax, encoder in zip(axes, encoders):
        for i, (label, rows) in enumerate(sweep.series.items()):
            mine = sorted((r for r in rows if r["encoder"] == encoder), key=lambda r: r[sweep.x_field])
            if not mine:
                continue
            x = [_pct(r[sweep.x_field]) if sweep.x_field == "fraction" else r[sweep.x_field] for r in mine]
            err = [_pct(r["acc1_std"]) if r["n_seeds"] > 1 and not math.isnan(r["acc1_std"]) else 0.0 for r in mine]
            ax.errorbar(
                x,
                [_pct(r["acc1_mean"]) for r in mine],
                yerr=err if any(err) else None,
                marker="o",
                capsize=2,
                color=f"C{i}",
                label=label,
            )
        for label, value in sweep.references.items():
            ax.axhline(_pct(value), label=label, **_reference_style(label))
        if xs and xs[-1] >= 10 * xs[0] > 0:
            ax.set_xscale("log")
        ticks = [_pct(x) if sweep.x_field == "fraction" else x for x in xs]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], minor=False)
        ax.minorticks_off()
        ax.set_title(encoder)
        ax.set_xlabel(AXIS_LABELS[sweep.x_field])
    axes[0].set_ylabel("top-1 (%)")
    fig.suptitle(sweep.title)
    _legend_outside(fig, axes)
    return fig


def _variant_order(row: dict[str, Any]) -> tuple:
    """Baselines before Zoom-shot loss sets, then by name: the legend reads like the tables."""
    return row["method"] == "zoomshot", row["base_variant"]


def sweeps(rows: list[dict[str, Any]], dataset: str, x_field: str, chosen: dict[str, Any]) -> list[tuple[str, Sweep]]:
    """(file stem, Sweep) of every sweep figure of one dataset along `x_field`: zero-shot rows in parts
    of at most MAX_SERIES series, then one per adapter. The other sweep field is fixed at the chosen
    value (default: its largest), so no line mixes two settings."""
    other = next(f for f in SWEEP_FIELDS if f != x_field)
    mine = [r for r in rows if r["dataset"] == dataset]
    students = [r for r in mine if not r["teacher"] and r[x_field] is not None]
    if len({r[x_field] for r in students}) < 2:
        return []
    at = chosen.get(other) or max((r[other] for r in students if r[other] is not None), default=None)
    students = [r for r in students if r[other] in (None, at)]
    clip = {adapter_label(r): r["acc1_mean"] for r in mine if r["teacher"]}
    where = f" ({other} {at})" if at is not None else ""
    zero_shot = sorted((r for r in students if adapter_label(r) is None), key=_variant_order)
    kinds = {r["variant"]: r["method"] == "zoomshot" for r in zero_shot}  # adapted lines keep their colours
    refs = {"CLIP zero-shot": clip[None]} if None in clip else {}
    out = _parts(
        f"acc_vs_{x_field}_{dataset}",
        x_field,
        zero_shot,
        "variant",
        refs,
        f"{dataset}: zero-shot top-1 against {x_field}{where}",
    )
    for adapter in sorted({adapter_label(r) for r in students} - {None}):  # one figure per support set too
        adapted = sorted(
            (r for r in students if adapter_label(r) == adapter),
            key=lambda r: (kinds.get(r["base_variant"], True), r["base_variant"]),
        )
        with_clip = {**refs, **({f"CLIP + {adapter}": clip[adapter]} if adapter in clip else {})}
        out += _parts(
            f"acc_vs_{x_field}_{dataset}_{slug(adapter)}",
            x_field,
            adapted,
            "base_variant",
            with_clip,
            f"{dataset}: top-1 with {adapter} against {x_field}{where}",
            f" + {adapter}",
        )
    return out


def _parts(
    stem: str, x_field: str, rows: list[dict[str, Any]], key: str, refs: dict[str, float], title: str, suffix: str = ""
) -> list[tuple[str, Sweep]]:
    """The rows as series (grouped by `key`, in their order) in figures of at most MAX_SERIES."""
    series: dict[str, list] = {}
    for row in rows:
        series.setdefault(row[key], []).append(row)
    labels = list(series)
    chunks = [labels[i : i + MAX_SERIES] for i in range(0, len(labels), MAX_SERIES)]
    return [
        (
            stem + (f"_part{k}" if len(chunks) > 1 else ""),
            Sweep(x_field, {label + suffix: series[label] for label in chunk}, refs, title),
        )
        for k, chunk in enumerate(chunks, 1)
    ]


# ---- loss terms per epoch ----------------------------------------------------------------------------


def load_histories(
    results: list[dict[str, Any]], runs_dir: Path, names: Sequence[str] = (), chosen: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """run.json records with a per-epoch history (> 1 epoch): the named runs, or else, per encoder and
    variant, the run of the lowest seed at the chosen fraction and epochs (default: the largest)."""
    runs = {r["run"]: r for r in results if r.get("run") and r["run"] != "clip" and r.get("epochs")}
    if names:
        picked = [n for n in names if n in runs]
        missing = sorted(set(names) - set(picked))
        if missing:
            warnings.warn(f"no loss curves of {', '.join(missing)}: no result names these runs", stacklevel=2)
    else:
        at = {f: (chosen or {}).get(f) or max((r[f] for r in runs.values()), default=None) for f in SWEEP_FIELDS}
        first: dict[tuple, dict] = {}
        for r in sorted(runs.values(), key=lambda r: r.get("seed") or 0):
            if all(r[f] == at[f] for f in SWEEP_FIELDS):
                first.setdefault((r["encoder"], r["variant"]), r)
        picked = [r["run"] for r in first.values()]
    records = []
    for name in picked:
        if not (Path(runs_dir) / name).is_dir():  # runs removed since: their results still count
            continue
        try:
            record = read_run(Path(runs_dir) / name).record
        except PipelineError as err:
            warnings.warn(f"no loss curve of run {name}: {err}", stacklevel=2)
            continue
        if len(record.get("history") or []) > 1:
            records.append(record)
    return records


@styled
def loss_terms_figure(records: list[dict[str, Any]], title: str) -> plt.Figure:
    """One panel per loss term any record has, one line per record (unweighted terms, as the trainer
    logs them, so their own scale shows; log y where every value is positive)."""
    terms = [t for t in TERMS if any(t in h for r in records for h in r["history"])]
    fig, axes = _figure(len(terms), height=1.7, ncols=4, sharey=False)
    varying = [f for f in ("encoder", "fraction", "seed") if len({r.get(f) for r in records}) > 1]
    for ax, term in zip(axes, terms):
        positive = True
        for i, record in enumerate(records):
            points = [(h["epoch"], h[term]) for h in record["history"] if term in h]
            if not points:
                continue
            positive &= all(v > 0 for _, v in points)
            label = " ".join([record["variant"], *(f"{f}={record.get(f)}" for f in varying)])
            ax.plot(*zip(*points), color=f"C{i % 10}", label=label)
        ax.set_yscale("log" if positive else "linear")
        ax.set_title(TERM_TITLES[term])
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("loss (unweighted)")
    fig.suptitle(title)
    _legend_outside(fig, axes)
    return fig


# ---- the modality gap ------------------------------------------------------------------------------


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"each group must be a 2-D (n, d) array, got shape {a.shape}")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


@dataclass
class Projection:
    """Two axes fitted on CLIP's image and text features: the gap direction (text centroid to image
    centroid, of L2-normalised rows) and the first principal component of what is left, with both
    groups weighing the same (64 class texts count as much as 1,500 images)."""

    mean: np.ndarray
    components: np.ndarray  # (2, d)
    explained: np.ndarray  # share of the fitted groups' variance along each axis

    @classmethod
    def fit(cls, image: np.ndarray, text: np.ndarray) -> Projection:
        units = [_unit(image), _unit(text)]
        if units[0].shape[1] != units[1].shape[1]:
            raise ValueError(
                f"image and text features must have the same width, got {units[0].shape[1]} and {units[1].shape[1]}"
            )
        centroids = [u.mean(axis=0) for u in units]
        mean = (centroids[0] + centroids[1]) / 2
        gap = centroids[0] - centroids[1]
        axis = gap / max(float(np.linalg.norm(gap)), 1e-12)
        weighted = np.concatenate([(u - mean) / math.sqrt(2 * len(u)) for u in units])
        rest = weighted - np.outer(weighted @ axis, axis)
        vt = np.linalg.svd(rest, full_matrices=False)[2]
        second = vt[0] * (np.sign(vt[0][np.abs(vt[0]).argmax()]) or 1.0)
        components = np.stack([axis, second])
        total = float((weighted**2).sum())
        explained = ((weighted @ components.T) ** 2).sum(axis=0) / total if total else np.zeros(2)
        return cls(mean, components, explained)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (_unit(x) - self.mean) @ self.components.T


@styled
def gap_figure(view: GapView, title: str, labelled: int = 6, max_points: int = 1500) -> plt.Figure:
    """CLIP images, mapped encoder images and CLIP class texts (drawn last, on top; `labelled` of them
    named) on the projection fitted on CLIP's image and text features."""
    proj = Projection.fit(view.clip_image, view.clip_text)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 3.9), layout="constrained")
    groups = {"CLIP image": view.clip_image, **view.mapped}
    for i, (label, points) in enumerate(groups.items()):
        xy = proj(points[:: max(1, math.ceil(len(points) / max_points))])
        gap = view.gaps.get(label)
        ax.scatter(
            xy[:, 0],
            xy[:, 1],
            s=3,
            alpha=0.35,
            color="gray" if i == 0 else f"C{i - 1}",
            linewidths=0,
            label=label + (f" (gap {gap:.2f})" if gap is not None else ""),
        )
    text = proj(view.clip_text)
    size = 28 * min(1.0, 64 / len(text)) ** 0.5  # 1,000 full-size stars would hide the images
    ax.scatter(
        text[:, 0],
        text[:, 1],
        s=size,
        marker="*",
        color="black",
        edgecolors="white",
        linewidths=0.4,
        zorder=5,
        label=f"CLIP class text ({len(text)} classes)",
    )
    for i in np.linspace(0, len(text) - 1, min(labelled, len(text))).astype(int):
        ax.annotate(view.classnames[i], text[i], xytext=(3, 3), textcoords="offset points", fontsize=6, zorder=6)
    ax.set_xlabel(f"gap direction: CLIP text to image centroid ({100 * proj.explained[0]:.0f} % of var.)")
    ax.set_ylabel(f"first PC of the rest ({100 * proj.explained[1]:.0f} %)")
    ax.set_title(title)
    _legend_outside(fig, [ax], below=True)
    return fig


# ---- per-class accuracy ------------------------------------------------------------------------------


def _short(name: str, limit: int = NAME_CHARS) -> str:
    """A class name cut to fit beside a bar (ImageNet has "Mexican hairless dog (xoloitzcuintli)")."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def class_ends(diff: np.ndarray, shown: int) -> tuple[list[int], list[int]]:
    """Classes with test rows, by top-1 minus CLIP's: the `shown` lost most and the `shown` best (both
    from the worst down), or every class as the first list where there are at most 2 x `shown`."""
    order = [int(i) for i in np.argsort(diff, kind="stable") if not math.isnan(diff[i])]  # NaN sorts last
    return (order, []) if len(order) <= 2 * shown else (order[:shown], order[-shown:])


@styled
def per_class_figure(
    deficits: dict[str, np.ndarray], classnames: list[str], title: str, shown: int = PER_CLASS_SHOWN
) -> plt.Figure:
    """Per encoder (a panel each): top-1 minus CLIP's per class, in points, for every class or, with
    more than 2 x `shown` classes (ImageNet's 1,000), only the `shown` lost most and the `shown` best,
    a row between them counting the classes left out. The title says which."""
    n_classes = max(int((~np.isnan(d)).sum()) for d in deficits.values())
    cut = n_classes > 2 * shown
    fig, axes = _figure(len(deficits), height=0.14 * (min(n_classes, 2 * shown) + cut) + 1.0, ncols=2, sharey=False)
    for ax, (label, diff) in zip(axes, deficits.items()):
        worst, best = class_ends(diff, shown)
        rows = worst + ([None] if best else []) + best  # None: the classes left out
        values = [0.0 if i is None else 100 * diff[i] for i in rows]
        ax.barh(range(len(rows)), values, color=["C3" if v < 0 else "C2" for v in values])
        ax.set_yticks(
            range(len(rows)),
            [f"… {len(diff) - len(worst) - len(best)} more" if i is None else _short(classnames[i]) for i in rows],
        )
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlim(min([0.0, *values]) - 5, max([0.0, *values]) + 5)
        ax.set_title(label)
        ax.set_xlabel("top-1 minus CLIP's (points)")
    which = (
        f"the {shown} classes lost most and the {shown} best of {n_classes:,}" if cut else f"all {n_classes} classes"
    )
    fig.suptitle(f"{title}: {which}, against CLIP")
    return fig


def _per_class(
    results: list[dict[str, Any]], rows: list[dict[str, Any]], dataset: str
) -> tuple[dict[str, np.ndarray], list[str]] | None:
    """Per encoder: its best zero-shot variant's per-class top-1 (mean over seeds) minus CLIP's."""
    mine = [r for r in results if r["dataset"] == dataset and "per_class_acc" in r["metrics"]]
    clip = next((r for r in mine if r["method"] == "clip"), None)
    if clip is None:
        return None
    base = np.asarray(clip["metrics"]["per_class_acc"], dtype=float)
    best: dict[str, dict] = {}
    for row in rows:
        if (
            row["dataset"] == dataset
            and not row["teacher"]
            and row["adapter"] is None
            and (row["encoder"] not in best or row["acc1_mean"] > best[row["encoder"]]["acc1_mean"])
        ):
            best[row["encoder"]] = row
    keys = ("encoder", "variant", "fraction", "epochs")
    deficits = {}
    for encoder, row in sorted(best.items()):
        seeds = [r["metrics"]["per_class_acc"] for r in mine if all(r.get(k) == row[k] for k in keys)]
        if seeds:
            deficits[f"{encoder}: {row['variant']}"] = np.nanmean(np.asarray(seeds, dtype=float), axis=0) - base
    return (deficits, clip["classnames"]) if deficits and clip.get("classnames") else None


# ---- everything at once ------------------------------------------------------------------------------


def write_plots(
    results: list[dict[str, Any]],
    runs_dir: Path,
    out_dir: Path,
    gap_views: dict[str, GapView] | None = None,
    chosen: dict[str, Any] | None = None,
    runs: Sequence[str] = (),
) -> list[Path]:
    """Every figure the results support, written into out_dir as PNG and PDF; returns the paths written."""
    chosen = chosen or {}
    rows = summary_rows(results)
    datasets = sorted({r["dataset"] for r in rows})
    written = []
    for dataset in datasets:
        for x_field in SWEEP_FIELDS:
            for stem, sweep in sweeps(rows, dataset, x_field, chosen):
                written += _save(accuracy_figure(sweep), out_dir, stem)
    records = load_histories(results, runs_dir, runs, chosen)
    for encoder in sorted({r["encoder"] for r in records}):
        mine = sorted(
            (r for r in records if r["encoder"] == encoder), key=lambda r: (r["variant"], r["fraction"], r["seed"])
        )
        for k in range(0, len(mine), MAX_SERIES):
            suffix = f"_part{k // MAX_SERIES + 1}" if len(mine) > MAX_SERIES else ""
            written += _save(
                loss_terms_figure(mine[k : k + MAX_SERIES], f"{encoder}: loss terms per epoch"),
                out_dir,
                f"loss_terms_{encoder}{suffix}",
            )
    for dataset, view in (gap_views or {}).items():
        written += _save(gap_figure(view, f"{dataset}: the modality gap"), out_dir, f"modality_gap_{dataset}")
    for dataset in datasets:
        found = _per_class(results, rows, dataset)
        if found:
            written += _save(per_class_figure(*found, f"{dataset}: top-1 per class"), out_dir, f"per_class_{dataset}")
    return written
