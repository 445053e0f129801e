"""Paste the default run's generated report into the documentation: README's headline table (made here
from the run's results.json), docs/results.md's full tables (the report's own files, between their
markers) and the figures both embed, copied to docs/. Run after the default pipeline:

    HF_HUB_OFFLINE=1 pipeline run && python scripts/readme_report.py [REPORT_DIR]

`tests/test_default_world.py` re-makes the report and checks that README and docs/results.md hold the
same tables.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: <!-- report:NAME --> ... <!-- /report:NAME --> blocks: the page that holds each
PAGES = {"headline": "README.md", "table": "docs/results.md", "data_efficiency": "docs/results.md"}
FIGURES = "acc_vs_fraction_shapes_part*.png"  # embedded from docs/ (a figure holds at most 8 series)
#: README's rows: CLIP, the baselines a reader knows, and the loss sets at both ends under both presets
HEADLINE_VARIANTS = ("linear-aligner", "lstsq", "mse", "mse+cyc+kd-lm", "mse (paper)", "mse+cyc+kd-lm (paper)")


def block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- report:{name} -->\n)(.*?)(<!-- /report:{name} -->)", re.S)


def headline(report_dir: Path) -> str:
    """Zero-shot top-1 (%) of CLIP and of `HEADLINE_VARIANTS` on the first test dataset (all classes), a
    column per (encoder, fraction); '–' where the grid has no such run."""
    rows = [r for r in json.loads((Path(report_dir) / "results.json").read_text()) if r["adapter"] is None]
    dataset = rows[0]["dataset"]
    rows = [r for r in rows if r["dataset"] == dataset]
    cells = {(r["encoder"], r["variant"], r["fraction"]): r["acc1_mean"] for r in rows}
    clip = next(r["acc1_mean"] for r in rows if r["teacher"])
    columns = sorted(
        {(r["encoder"], r["fraction"]) for r in rows if not r["teacher"]},
        key=lambda c: ([r["encoder"] for r in rows].index(c[0]), c[1]),
    )
    lines = [
        "| variant | " + " | ".join(f"{e}, {100 * f:g} %" for e, f in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
        "| CLIP (the teacher) | " + " | ".join(f"{100 * clip:.1f}" for _ in columns) + " |",
    ]
    for variant in HEADLINE_VARIANTS:
        values = [cells.get((e, variant, f)) for e, f in columns]
        lines.append(f"| {variant} | " + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def made(name: str, report_dir: Path) -> str:
    """What the block `name` holds for the report in `report_dir`."""
    return headline(report_dir) if name == "headline" else (Path(report_dir) / f"{name}.md").read_text()


def main(report_dir: Path) -> None:
    for page in sorted(set(PAGES.values())):
        text = (ROOT / page).read_text()
        for name in (n for n, p in PAGES.items() if p == page):
            table = made(name, report_dir)
            text, found = block(name).subn(lambda m, t=table: m.group(1) + t + m.group(3), text)
            if not found:
                sys.exit(f"{page} has no <!-- report:{name} --> block")
        (ROOT / page).write_text(text)
    figures = sorted(report_dir.glob(FIGURES))
    if not figures:
        sys.exit(f"{report_dir} has no {FIGURES}: run the default pipeline first")
    for figure in figures:
        shutil.copyfile(figure, ROOT / "docs" / figure.name)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("zoomshot-out/report"))
