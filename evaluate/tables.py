"""Paper-style tables pivoted from the report's summary rows, written as Markdown, CSV and LaTeX.

A table is a pivot of (setting, metric) cells: `Pivot(rows=("variant",), columns=("encoder", "dataset",
"metric"))` is the paper's main table, rows = variants (CLIP first, then baselines, then Zoom-shot loss
sets, each with its adapter rows right under it) and one column per encoder x dataset x class group.
Fields not in the pivot are sliced: fraction and epochs to one value each (the largest by default),
anything else must already be single-valued (filter it, or put it in the pivot).

Wildcards keep the reference rows complete: CLIP's results belong to no encoder, fraction or epochs,
and a closed-form baseline to no epochs, so such a result fills every column of those fields.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoomshot.cache import atomic
from zoomshot.cache.errors import PipelineError

from .report import GROUP_PREFIX, RECALL_K, RETRIEVAL

FIELDS = ("encoder", "dataset", "variant", "fraction", "epochs", "metric")
SLICED = ("fraction", "epochs")
WILDCARD = None  # a record's value on a field it does not depend on
TEACHER, BASELINE, ZOOMSHOT = range(3)  # row order of the three kinds of variant
#: metrics that are a share of samples: shown in %, best marked, compared with CLIP's
PERCENT = ("acc1", "acc5", "mean_per_class_recall", "teacher_agreement", "clip_acc1", "zero_shot_acc1", *RETRIEVAL)
ADAPTED = "↳ + "  # an adapter row's label prefix: it sits under the variant it adapts
TITLES = {
    "acc1": "top-1",
    "acc5": "top-5",
    "mean_per_class_recall": "mean per-class recall",
    "teacher_agreement": "agreement with CLIP's top-1",
    "gap": "modality gap (centroid distance)",
    "text_cos": "mean cosine to the class text",
    **{m: "retrieval Recall@k" for m in RETRIEVAL},
}
#: column labels of the retrieval metrics: CLIP_benchmark's image retrieval is text -> image
SHORT = {
    f"{side}_retrieval_recall@{k}": f"{arrow} R@{k}"
    for side, arrow in (("image", "t→i"), ("text", "i→t"))
    for k in RECALL_K
}


@dataclass(frozen=True)
class Pivot:
    rows: tuple[str, ...]
    columns: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Pivot:
        """`ROWS:COLUMNS`, each a comma-separated list of fields, e.g. "variant:encoder,dataset"."""
        rows, sep, columns = text.partition(":")
        pivot = cls(*(tuple(f.strip() for f in part.split(",") if f.strip()) for part in (rows, columns)))
        used = pivot.rows + pivot.columns
        bad = sorted(set(used) - set(FIELDS))
        if not sep or not pivot.rows or not pivot.columns or bad or len(set(used)) < len(used):
            raise ValueError(
                f"must be ROWS:COLUMNS, each a comma-separated list of distinct fields among "
                f"{', '.join(FIELDS)}, e.g. 'variant:encoder,dataset'; got {text!r}"
            )
        return pivot


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float
    n: int


@dataclass
class Table:
    caption: str
    pivot: Pivot
    rows: list[tuple]  # row keys, in order; a variant value is (base, adapter)
    columns: list[tuple]  # column keys, in order
    cells: dict[tuple[tuple, tuple], Cell]
    percent: bool
    best: set[tuple[tuple, tuple]] = field(default_factory=set)
    share: dict[tuple, float] = field(default_factory=dict)  # row -> mean share (%) of CLIP's cells
    partial: set[tuple] = field(default_factory=set)  # rows whose share covers only some columns
    kinds: dict[tuple, int] = field(default_factory=dict)  # row -> TEACHER / BASELINE / ZOOMSHOT


def metric_family(metric: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metric, then (for top-1) its value on each class group any row holds: the group columns."""
    if metric != "acc1":
        return [metric]
    groups = sorted(
        {
            k.removesuffix("_mean")
            for r in rows
            for k, v in r.items()
            if k.startswith(GROUP_PREFIX) and k.endswith("_mean") and not math.isnan(v)
        }
        - {metric}
    )
    return [metric, *groups]


def _kind(row: dict[str, Any], methods: dict[str, str]) -> int:
    if row["teacher"]:
        return TEACHER
    return ZOOMSHOT if methods.get(row["base_variant"], row["method"]) == "zoomshot" else BASELINE


def _records(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One record per (summary row, metric) holding a number, with wildcards where a row has no value."""
    methods = {r["variant"]: r["method"] for r in rows if r["adapter"] is None}
    out = []
    for r in rows:
        for metric in metrics:
            mean = r.get(f"{metric}_mean", math.nan)
            if math.isnan(mean):
                continue
            out.append(
                {
                    "encoder": WILDCARD if r["teacher"] else r["encoder"],
                    "dataset": r["dataset"],
                    "variant": (r["base_variant"], adapter_label(r)),
                    "fraction": r["fraction"],
                    "epochs": r["epochs"],
                    "metric": metric,
                    "kind": _kind(r, methods),
                    "cell": Cell(mean, r[f"{metric}_std"], r["n_seeds"]),
                }
            )
    return out


def adapter_label(row: dict[str, Any]) -> str | None:
    """A summary row's adapter with its support set: its variant less the adapted one ('tip-x (name-only
    support)'), so that one adapter with two support sets makes two rows (and two figures); None for a
    zero-shot row."""
    if row["adapter"] is None:
        return None
    return row["variant"].removeprefix(f"{row['base_variant']}+")


def _slice(
    records: list[dict[str, Any]], pivot: Pivot, chosen: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Keep the records at the chosen value (default: the largest) of each sliced field not in the pivot;
    returns them and the values used."""
    used = {}
    for name in SLICED:
        if name in pivot.rows + pivot.columns:
            continue
        values = {r[name] for r in records} - {WILDCARD}
        value = chosen.get(name)
        if value is None:
            value = max(values, default=None)
        elif value not in values:
            raise PipelineError(
                f"no result has {name} {value}; there are: {', '.join(map(str, sorted(values))) or 'none'}"
            )
        records = [r for r in records if r[name] in (WILDCARD, value)]
        used[name] = value
    return records, used


def _sort_value(name: str, value: Any, order: dict) -> tuple:
    if name == "variant":
        base, adapter = value
        return order[value], base, adapter or ""
    if name == "metric":
        return (order[value],)
    return value is not WILDCARD, value if value is not WILDCARD else 0


def _expand(record: dict[str, Any], names: Sequence[str], values: dict[str, list]) -> list[tuple]:
    """Every key a record fills: a wildcard stands for each value the field takes."""
    keys: list[tuple] = [()]
    for name in names:
        options = values[name] if record[name] is WILDCARD and values[name] else [record[name]]
        keys = [k + (v,) for k in keys for v in options]
    return keys


def _ambiguity(a: dict[str, Any], b: dict[str, Any], pivot: Pivot) -> str:
    differ = [f for f in FIELDS if f not in pivot.rows + pivot.columns and a[f] != b[f]]
    what = ", ".join(f"{f} ({_value_label(f, a[f], row=False)} and {_value_label(f, b[f], row=False)})" for f in differ)
    return (
        f"two results fall in one cell of the table: they differ in {what}; put "
        f"{' or '.join(differ)} into the pivot (--pivot), or keep one with the report's filters"
    )


def pivot_table(
    rows: Sequence[dict[str, Any]],
    pivot: Pivot,
    metrics: Sequence[str],
    chosen: dict[str, Any] | None = None,
    adapters: bool = True,
) -> Table:
    """The pivot of `summary_rows` over `metrics` (the `metric` field's values, in this order); with
    several metrics and no `metric` in the pivot, they become the innermost columns (class groups)."""
    if len(metrics) > 1 and "metric" not in pivot.rows + pivot.columns:
        pivot = Pivot(pivot.rows, (*pivot.columns, "metric"))
    records, used = _slice(_records(rows, metrics), pivot, chosen or {})
    if not adapters:
        records = [r for r in records if r["variant"][1] is None]
    if not records:
        raise PipelineError("no result has a number for this table: check the metric and the slice")
    metric_order = {m: i for i, m in enumerate(metrics)}
    variant_order = {r["variant"]: r["kind"] for r in records}
    order = metric_order | variant_order
    values = {
        name: sorted({r[name] for r in records} - {WILDCARD}, key=lambda v, n=name: _sort_value(n, v, order))
        for name in FIELDS
    }
    cells: dict[tuple[tuple, tuple], Cell] = {}
    source: dict[tuple[tuple, tuple], dict] = {}
    kinds: dict[tuple, int] = {}
    # CLIP has a row of its own where variants are rows; elsewhere its cells fill every row, like columns
    row_values = values if "variant" not in pivot.rows else {name: [] for name in FIELDS}
    for record in records:
        for row in _expand(record, pivot.rows, row_values):
            kinds[row] = min(kinds.get(row, ZOOMSHOT), record["kind"])
            for col in _expand(record, pivot.columns, values):
                if (row, col) in source and source[row, col] is not record:
                    raise PipelineError(_ambiguity(source[row, col], record, pivot))
                source[row, col], cells[row, col] = record, record["cell"]

    def key_order(names: Sequence[str]) -> Callable[[tuple], tuple]:
        return lambda key: tuple(_sort_value(n, v, order) for n, v in zip(names, key))

    row_keys = sorted(kinds, key=lambda k: (kinds[k] != TEACHER, key_order(pivot.rows)(k)))
    col_keys = sorted({c for _, c in cells}, key=key_order(pivot.columns))
    percent = all(m in PERCENT or m.startswith(GROUP_PREFIX) for m in metrics)
    table = Table(
        _caption(metrics, records, used, percent, "variant" in pivot.rows),
        pivot,
        row_keys,
        col_keys,
        cells,
        percent,
        kinds=kinds,
    )
    if percent:
        _mark(table, source)
    return table


def _caption(
    metrics: Sequence[str], records: list[dict[str, Any]], used: dict[str, Any], percent: bool, share: bool
) -> str:
    """What the cells are, so that a table pasted anywhere still says it."""
    what = " and ".join(dict.fromkeys(TITLES.get(m, m) for m in metrics if not m.startswith(GROUP_PREFIX)))
    seeds = sorted({r["cell"].n for r in records if r["kind"] != TEACHER})
    parts = [
        f"{what}{' (%)' if percent else ''} on {', '.join(sorted({r['dataset'] for r in records}))}",
        f"mean ± std over {'/'.join(map(str, seeds))} seed(s)" if seeds and max(seeds) > 1 else "one seed",
        *(f"{name} {value}" for name, value in used.items() if value is not None),
    ]
    if percent:
        parts.append("bold: best zero-shot student per column")
        if any(r["variant"][1] for r in records):
            parts.append("↳ rows: a training-free adapter on the support set in brackets")
        if share and any(r["kind"] == TEACHER for r in records):
            parts.append("% of CLIP: the mean share of CLIP's zero-shot cell over the row's columns")
    return "; ".join(parts) + "."


def _mark(table: Table, source: dict[tuple[tuple, tuple], dict]) -> None:
    """Best zero-shot student cell per column (CLIP and adapted results are references, not contenders),
    and, where variants are rows, each row's mean share of the CLIP zero-shot cell of its columns."""

    def zero_shot(key: tuple[tuple, tuple], kind: int) -> bool:
        record = source.get(key)
        return record is not None and record["variant"][1] is None and (record["kind"] == TEACHER) == (kind == TEACHER)

    for col in table.columns:  # compared as printed: two cells that read the same are both best
        found = [(_number(table, table.cells[r, col].mean), r) for r in table.rows if zero_shot((r, col), ZOOMSHOT)]
        top = max((m for m, _ in found), default=None, key=float)
        table.best |= {(r, col) for m, r in found if m == top}
    if "variant" not in table.pivot.rows:
        return
    clip = {c: table.cells[r, c].mean for r in table.rows for c in table.columns if zero_shot((r, c), TEACHER)}
    for row in table.rows:
        ratios = [table.cells[row, c].mean / clip[c] for c in table.columns if (row, c) in table.cells and clip.get(c)]
        if ratios:
            table.share[row] = 100 * sum(ratios) / len(ratios)
            if len(ratios) < sum(1 for c in table.columns if clip.get(c)):
                table.partial.add(row)
    if table.partial:  # a share over fewer columns is not comparable with the others': say so on the number
        table.caption = table.caption.removesuffix(".") + f"; {PARTIAL}: over the columns the row fills only."


#: marks a share of CLIP computed over some of the columns only (a preset run on one encoder)
PARTIAL = "†"


def _share_text(table: Table, row: tuple, fmt: str, missing: str, mark: str = PARTIAL) -> str:
    if row not in table.share:
        return missing
    return format(table.share[row], fmt) + (mark if row in table.partial else "")


# ---- text of a table -------------------------------------------------------------------------------


def _value_label(name: str, value: Any, row: bool = True) -> str:
    """A row label puts an adapter under its variant (the row above); a column label names both."""
    if value is WILDCARD:
        return "CLIP" if name == "encoder" else "–"
    if name == "variant":
        base, adapter = value
        base = "CLIP" if base == "clip" else base
        return base if adapter is None else ADAPTED + adapter if row else f"{base} + {adapter}"
    if name == "fraction":
        return f"{100 * value:g} %"
    if name == "epochs":
        return f"{value} ep"
    if name == "metric":
        return "all" if value == "acc1" else SHORT.get(value, value.removeprefix(GROUP_PREFIX))
    return str(value)


def _number(table: Table, value: float) -> str:
    return f"{100 * value:.1f}" if table.percent else f"{value:.3f}"


def _cell_text(table: Table, row: tuple, col: tuple, pm: str) -> str | None:
    cell = table.cells.get((row, col))
    if cell is None:
        return None
    text = _number(table, cell.mean)
    if cell.n > 1 and not math.isnan(cell.std):
        text += f"{pm}{_number(table, cell.std)}"
    return text


def _column_label(table: Table, col: tuple) -> str:
    """Fields joined by " / ", a class group in brackets: "cnn / shapes (held_out)"."""
    parts = [(n, v) for n, v in zip(table.pivot.columns, col) if not (n == "metric" and v == "acc1")]
    text = " / ".join(_value_label(n, v, row=False) for n, v in parts if not _is_group(n, v))
    groups = [_value_label(n, v) for n, v in parts if _is_group(n, v)]
    return f"{text} ({groups[0]})" if groups and text else groups[0] if groups else text


def _is_group(name: str, value: Any) -> bool:
    return name == "metric" and value.startswith(GROUP_PREFIX)


def to_markdown(table: Table) -> str:
    header = [n.capitalize() for n in table.pivot.rows] + [_column_label(table, c) for c in table.columns]
    header += ["% of CLIP"] if table.share else []
    align = [" --- "] * len(table.pivot.rows) + [" ---: "] * (len(header) - len(table.pivot.rows))
    lines = [table.caption, "", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in table.rows:
        labels = [_value_label(n, v) for n, v in zip(table.pivot.rows, row)]
        cells = []
        for col in table.columns:
            text = _cell_text(table, row, col, " ± ") or "–"
            cells.append(f"**{text}**" if (row, col) in table.best else text)
        if table.share:
            cells.append(_share_text(table, row, ".0f", "–"))
        lines.append("| " + " | ".join(labels + cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Numbers as numbers (% where the table is in %), mean and std in separate columns."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    row_names = [n for name in table.pivot.rows for n in (("variant", "adapter") if name == "variant" else (name,))]
    labels = [_column_label(table, c) or "value" for c in table.columns]
    writer.writerow(
        row_names
        + [f"{lab} {s}" for lab in labels for s in ("mean", "std")]
        + (["share_of_clip"] if table.share else [])
    )
    scale = 100 if table.percent else 1
    for row in table.rows:
        line = [
            x
            for name, v in zip(table.pivot.rows, row)
            for x in ((v[0], v[1] or "") if name == "variant" else ("" if v is WILDCARD else v,))
        ]
        for col in table.columns:
            cell = table.cells.get((row, col))
            line += (
                ["", ""]
                if cell is None
                else [f"{scale * cell.mean:.4g}", "" if math.isnan(cell.std) else f"{scale * cell.std:.4g}"]
            )
        if table.share:
            line.append(f"{table.share[row]:.4g}" if row in table.share else "")
        writer.writerow(line)
    return out.getvalue()


def _tex(text: str) -> str:
    return (
        text.replace("\\", r"\textbackslash{}")
        .replace("_", r"\_")
        .replace("%", r"\%")
        .replace("&", r"\&")
        .replace("#", r"\#")
        .replace("–", "--")
    )


def _header_levels(table: Table) -> list[str]:
    """One header line per column field, equal neighbours merged with \\multicolumn and underlined."""
    lead = " & " * (len(table.pivot.rows) - 1)
    lines = []
    for level, name in enumerate(table.pivot.columns):
        spans: list[list] = []
        for i, col in enumerate(table.columns):
            key = col[: level + 1]
            if spans and spans[-1][0] == key:
                spans[-1][2] += 1
            else:
                spans.append([key, i, 1])
        cells = []
        for key, _, width in spans:
            label = _tex(_value_label(name, key[-1], row=False))
            cells.append(label if width == 1 else rf"\multicolumn{{{width}}}{{c}}{{{label}}}")
        first = (
            " & ".join(_tex(n.capitalize()) for n in table.pivot.rows)
            if level == len(table.pivot.columns) - 1
            else lead
        )
        share = (r" & \% of CLIP" if level == len(table.pivot.columns) - 1 else " & ") if table.share else ""
        rules = " ".join(
            rf"\cmidrule(lr){{{start + len(table.pivot.rows) + 1}-{start + len(table.pivot.rows) + w}}}"
            for _, start, w in spans
            if w > 1
        )
        lines.append(f"{first} & {' & '.join(cells)}{share} \\\\" + (f" {rules}" if rules else ""))
    return lines


def to_latex(table: Table) -> str:
    """A booktabs tabular (\\usepackage{booktabs}); the best cell of each column in bold."""
    spec = "l" * len(table.pivot.rows) + "r" * (len(table.columns) + bool(table.share))
    lines = [
        f"% {_tex(table.caption)}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        *_header_levels(table),
        r"\midrule",
    ]
    previous = None
    for row in table.rows:
        if previous is not None and table.kinds[row] != table.kinds[previous]:
            lines.append(r"\midrule")
        previous = row
        labels = [_tex(_value_label(n, v)).replace(ADAPTED, r"\quad + ") for n, v in zip(table.pivot.rows, row)]
        cells = []
        for col in table.columns:
            text = _cell_text(table, row, col, r" $\pm$ ")
            cells.append("--" if text is None else rf"\textbf{{{text}}}" if (row, col) in table.best else text)
        if table.share:
            cells.append(_share_text(table, row, ".0f", "--", r"$^\dagger$"))
        lines.append(" & ".join(labels + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


FORMATS: dict[str, Callable[[Table], str]] = {"md": to_markdown, "csv": to_csv, "tex": to_latex}
MAIN_PIVOT = "variant:encoder,dataset"


def build_tables(
    rows: Sequence[dict[str, Any]],
    metric: str = "acc1",
    pivot: Pivot | None = None,
    chosen: dict[str, Any] | None = None,
) -> dict[str, Table]:
    """The report's tables by file stem: `table` (the paper's main table, `pivot` at the slice `chosen`),
    `data_efficiency` (the metric against fraction x epochs per encoder and variant, when those vary) and
    `modality_gap` (gap and text cosine per variant) and `retrieval` (Recall@1/5/10 both ways), when the
    results hold them."""
    pivot = pivot or Pivot.parse(MAIN_PIVOT)
    tables = {"table": pivot_table(rows, pivot, metric_family(metric, rows), chosen)}
    several = ("dataset",) if len({r["dataset"] for r in rows}) > 1 else ()
    if len({(r["fraction"], r["epochs"]) for r in rows if not r["teacher"] and r["adapter"] is None}) > 1:
        tables["data_efficiency"] = pivot_table(
            rows, Pivot(("encoder", "variant"), (*several, "fraction", "epochs")), [metric], adapters=False
        )
    by_direction = sorted(RETRIEVAL, key=lambda m: not m.startswith("image"))  # t->i R@1/5/10, then i->t
    for stem, metrics in (("modality_gap", ["gap", "text_cos"]), ("retrieval", by_direction)):
        if any(not math.isnan(r.get(f"{metrics[0]}_mean", math.nan)) for r in rows):
            tables[stem] = pivot_table(
                rows, Pivot(("variant",), ("encoder", *several, "metric")), metrics, chosen, adapters=False
            )
    return tables


def write_tables(tables: dict[str, Table], out_dir: Path) -> list[Path]:
    """Each table as <stem>.md, .csv and .tex in out_dir (atomically, like every output)."""
    return [
        atomic.write_text(Path(out_dir) / f"{stem}.{ext}", fmt(table))
        for stem, table in tables.items()
        for ext, fmt in FORMATS.items()
    ]
