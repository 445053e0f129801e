"""The one table `pipeline evaluate` ends with: the top-1 of every (test split, encoder, variant,
fraction, epochs) it scored, zero-shot and with each adapter, seeds averaged. It replaces a line per
result (those stay behind `--verbose`); `pipeline report` makes the full tables.
"""

from __future__ import annotations

import statistics
from typing import Any

ZERO_SHOT = "zero-shot"
KEY = ("test", "encoder", "variant", "fraction", "epochs")


def _row_key(result: dict[str, Any]) -> tuple:
    """What a row stands for; an adapted result belongs to the row of the variant it adapted."""
    return (
        f"{result['dataset']}:{result['split']}",
        result["encoder"],
        result.get("base_variant", result["variant"]),
        result.get("fraction"),
        result.get("epochs"),
    )


def _column(result: dict[str, Any], labelled: bool) -> str:
    """Zero-shot, or the adapter, with its support set when there are several: two support sets are two
    columns, never averaged as if they were seeds."""
    if "base_variant" not in result:
        return ZERO_SHOT
    label = result.get("support_label")
    return f"{result['method']} ({label})" if labelled and label else result["method"]


def _order(key: tuple) -> tuple:
    """CLIP (no fraction) first, then by test split, encoder, variant, fraction and epochs."""
    test, encoder, variant, fraction, epochs = key
    return (fraction is not None, test, encoder, variant, fraction or 0.0, epochs or 0)


def summary_table(results: list[dict[str, Any]]) -> str:
    """Top-1 in % per row, a column for zero-shot and one per adapter (in the order met); a `seeds`
    column when some row averages several seeds, a `test` column when there are several test splits."""
    cells: dict[tuple, dict[str, list[float]]] = {}
    scores = [ZERO_SHOT]
    labelled = len({r.get("support_label") for r in results if "base_variant" in r}) > 1
    for r in results:
        column = _column(r, labelled)
        scores += [column] * (column not in scores)
        cells.setdefault(_row_key(r), {}).setdefault(column, []).append(float(r["metrics"]["acc1"]))
    rows = []
    for key in sorted(cells, key=_order):
        row = {name: "-" if value is None else str(value) for name, value in zip(KEY, key)}
        row["seeds"] = str(max(len(v) for v in cells[key].values()))
        row.update(
            {f"{c} top-1": f"{100 * statistics.fmean(cells[key][c]):.1f}" if c in cells[key] else "-" for c in scores}
        )
        rows.append(row)
    head = [name for name in KEY if name != "test" or len({r["test"] for r in rows}) > 1]
    head += ["seeds"] * any(r["seeds"] != "1" for r in rows) + [f"{c} top-1" for c in scores]
    widths = {name: max(len(name), *(len(r[name]) for r in rows)) for name in head}
    left = {"test", "encoder", "variant"}

    def line(cells: dict[str, str]) -> str:
        return "  ".join(cells[n].ljust(widths[n]) if n in left else cells[n].rjust(widths[n]) for n in head).rstrip()

    return "\n".join([line({n: n for n in head}), *map(line, rows)])
