"""Merge per-(run, dataset) result JSON files into one table: CSV, Markdown and JSON (DESIGN.md section 6).

Runs write their own files from any process or machine; the report only reads them, so merging is a
directory walk. Seeds of the same configuration collapse into mean and sample std. One run fills one
cell: the report shows the config's grid (`select_results`), results of other runs only when asked and
then under their own label, and two results that would fill one cell are an error naming both runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zoomshot.cache import atomic
from zoomshot.cache.errors import PipelineError

RECALL_K = (1, 5, 10)
#: The retrieval metrics (`evaluate/retrieval.py`), CLIP_benchmark's names.
RETRIEVAL = tuple(f"{side}_retrieval_recall@{k}" for k in RECALL_K for side in ("image", "text"))
METRICS = ("acc1", "acc5", "mean_per_class_recall", "teacher_agreement", "clip_acc1", "gap", "text_cos", *RETRIEVAL)
GROUP_FIELDS = ("encoder", "method", "variant", "fraction", "epochs", "dataset")
REQUIRED_FIELDS = ("dataset", "encoder", "method", "variant", "metrics")
CLIP = "clip"
GROUP_PREFIX = "acc1_"


def _is_clip(result: dict[str, Any]) -> bool:
    return result["method"] == CLIP


def is_teacher(result: dict[str, Any]) -> bool:
    """CLIP's own results (zero-shot and adapted): every run is read against them."""
    return result.get("run") == CLIP or result["method"] == CLIP


def _read_result(path: Path) -> dict[str, Any] | None:
    """One result file, or None (with a warning) when it is unreadable or not a result."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warnings.warn(f"skipping {path}: not readable JSON ({err})", stacklevel=3)
        return None
    missing = [k for k in REQUIRED_FIELDS if k not in result] if isinstance(result, dict) else REQUIRED_FIELDS
    if missing or not isinstance(result["metrics"], dict):
        reason = f"missing {', '.join(missing)}" if missing else "metrics is not an object"
        warnings.warn(f"skipping {path}: not a result file ({reason})", stacklevel=3)
        return None
    return result


def load_results(
    results_dir: Path,
    encoders: Iterable[str] | None = None,
    datasets: Iterable[str] | None = None,
    methods: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Every result `*.json` under results_dir (recursive, path order), filtered; None keeps all.

    `methods` matches a result's method or variant. The CLIP ceiling passes the encoder and method
    filters, since every table is read against it; the dataset filter applies to it as to the rest.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory not found: {results_dir}")
    encoders, datasets, methods = (None if f is None else set(f) for f in (encoders, datasets, methods))
    kept = []
    for path in sorted(results_dir.rglob("*.json")):
        result = _read_result(path)
        if result is None or (datasets is not None and result["dataset"] not in datasets):
            continue
        if not _is_clip(result) and (
            (encoders is not None and result["encoder"] not in encoders)
            or (methods is not None and not {result["method"], result["variant"]} & methods)
        ):
            continue
        kept.append(result)
    return kept


def select_results(results: list[dict[str, Any]], grid: set[str], all_runs: bool = False) -> list[dict[str, Any]]:
    """CLIP's results and those of the runs named `grid` (the config's); with `all_runs` also every other
    run's, its variant labelled `<variant> [old run NAME]` so that it has a row of its own."""
    kept = []
    for result in results:
        if is_teacher(result) or result.get("run") in grid:
            kept.append(result)
        elif all_runs:
            label = f"[old run {result.get('run')}]"
            kept.append(
                {
                    **result,
                    "variant": f"{result['variant']} {label}",
                    "old_run": True,
                    **({"base_variant": f"{result['base_variant']} {label}"} if "base_variant" in result else {}),
                }
            )
    return kept


def _group_key(result: dict[str, Any]) -> tuple:
    """CLIP is one row per dataset whatever run evaluated it; other rows keep their fraction and epochs."""
    if _is_clip(result):
        return (result["encoder"], CLIP, CLIP, None, None, result["dataset"])
    return tuple(result.get(field) for field in GROUP_FIELDS)


def _metric(result: dict[str, Any], name: str) -> float:
    value = result["metrics"].get(name)
    return math.nan if value is None else float(value)


def _one_per_seed(key: tuple, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per seed. CLIP's zero-shot row keeps its newest result (files of an older layout may
    score it twice); any other cell filled by two results is an error naming both runs, never settled by
    time stamp or file order."""
    one: dict[Any, dict[str, Any]] = {}
    for result in sorted(results, key=lambda r: str(r.get("created", ""))):
        seed = None if _is_clip(result) else result.get("seed")
        if seed in one and not _is_clip(result):
            cell = ", ".join(f"{k} {v}" for k, v in zip(GROUP_FIELDS, key) if k != "method" and v is not None)
            both = sorted((one[seed], result), key=lambda r: str(r.get("run")))
            raise PipelineError(
                f"two results fill one cell ({cell}, seed {seed}): run {both[0].get('run')} (split "
                f"{both[0].get('split')}) and run {both[1].get('run')} (split {both[1].get('split')}); give "
                "differing configurations different variant names ([fit.definitions]), or remove one "
                "(`pipeline runs --prune`)"
            )
        one[seed] = result
    return list(one.values())


def _sort_key(row: dict[str, Any]) -> tuple:
    """CLIP first, then encoder, variant, fraction, epochs (None first), dataset: stable as files grow."""

    def opt(value: Any) -> tuple:
        return (value is not None, value if value is not None else 0)

    return (
        row["method"] != CLIP,
        row["encoder"],
        row["variant"],
        opt(row["fraction"]),
        opt(row["epochs"]),
        row["dataset"],
    )


def metric_names(results: list[dict[str, Any]]) -> list[str]:
    """The fixed metrics, then the top-1 of every class group (`acc1_<group>`) some result carries."""
    groups = sorted({k for r in results for k in r["metrics"] if k.startswith(GROUP_PREFIX)})
    return [*METRICS, *groups]


def summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (encoder, method, variant, fraction, epochs, dataset): mean and sample std over seeds
    of every metric (std NaN for a single seed), n_seeds, the adapted `base_variant` and `adapter` (None
    for zero-shot rows) and whether it is CLIP's own (`teacher`); deterministically ordered."""
    names = metric_names(results)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(_group_key(result), []).append(result)
    rows = []
    for key, members in groups.items():
        members = _one_per_seed(key, members)
        row: dict[str, Any] = dict(zip(GROUP_FIELDS, key))
        # an adapter's result names the variant it adapts: the tables group it under that row
        row["base_variant"] = members[0].get("base_variant", row["variant"])
        row["adapter"] = row["method"] if "base_variant" in members[0] else None
        row["teacher"] = is_teacher(members[0])
        row["n_seeds"] = len(members)
        for name in names:
            values = [_metric(r, name) for r in members]
            row[f"{name}_mean"] = statistics.fmean(values)
            finite = len(values) > 1 and not any(math.isnan(v) for v in values)  # stdev fails on NaN
            row[f"{name}_std"] = statistics.stdev(values) if finite else math.nan
        rows.append(row)
    return sorted(rows, key=_sort_key)


SETTING_FIELDS = (
    "run",
    "dataset",
    "split",
    "encoder",
    "method",
    "variant",
    "base_variant",
    "fraction",
    "epochs",
    "seed",
    "rows",
    "created",
)


def tidy_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per result file, for a notebook: the run's settings (its train data joined by `+`, each
    method setting as `params.<name>`), then every scalar metric (per-class lists left out)."""
    return [
        {
            **{k: r.get(k) for k in SETTING_FIELDS},
            "train": "+".join(r.get("train_data") or []) or None,
            **{f"params.{k}": v for k, v in (r.get("params") or {}).items()},
            **{k: v for k, v in r["metrics"].items() if not isinstance(v, (list, dict))},
        }
        for r in results
    ]


def _plain(value: Any) -> Any:
    """NaN as null so that results.json is strict JSON any tool reads."""
    return None if isinstance(value, float) and math.isnan(value) else value


def write_summary(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Every summary row, flat, as results.csv and results.json (the data behind every table and figure)."""
    out_dir = Path(out_dir)
    plain_rows = [{k: _plain(v) for k, v in row.items()} for row in rows]
    paths = {"csv": out_dir / "results.csv", "json": out_dir / "results.json"}
    names = [k.removesuffix("_mean") for k in (rows[0] if rows else {}) if k.endswith("_mean")]
    fields = [
        *GROUP_FIELDS,
        "base_variant",
        "adapter",
        "teacher",
        "n_seeds",
        *(f"{m}_{s}" for m in names for s in ("mean", "std")),
    ]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=fields)
    writer.writeheader()
    writer.writerows(plain_rows)
    atomic.write_text(paths["csv"], table.getvalue())
    atomic.write_text(paths["json"], json.dumps(plain_rows, indent=2) + "\n")
    return list(paths.values())


MANIFEST = "report_files.json"


def replace_outputs(out_dir: Path, written: list[Path]) -> list[str]:
    """Record the files this report wrote, and remove those the previous report listed and this one did
    not write: a figure of a dataset filtered out now must not sit beside the new tables. Files the
    report never wrote are left alone. Returns the names removed."""
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    names = sorted(p.name for p in written)
    try:
        previous = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        previous = []
    stale = [n for n in previous if isinstance(n, str) and n not in names and Path(n).name == n]
    for name in stale:
        (out_dir / name).unlink(missing_ok=True)
    atomic.write_json(manifest, {"files": names})
    return stale
