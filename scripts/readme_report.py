"""Paste the default run's generated report into README.md: the tables between their markers, and the
figures README embeds copied to docs/. Run after the default pipeline:

    HF_HUB_OFFLINE=1 pipeline run && python scripts/readme_report.py [REPORT_DIR]

`tests/test_default_world.py` re-makes the report and checks that README holds the same tables.
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("table", "data_efficiency")        # <!-- report:NAME --> ... <!-- /report:NAME --> in README.md
FIGURES = "acc_vs_fraction_shapes_part*.png"  # embedded from docs/ (a figure holds at most 8 series)


def block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- report:{name} -->\n)(.*?)(<!-- /report:{name} -->)", re.S)


def main(report_dir: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    for name in TABLES:
        table = (report_dir / f"{name}.md").read_text()
        readme, found = block(name).subn(lambda m, t=table: m.group(1) + t + m.group(3), readme)
        if not found:
            sys.exit(f"README.md has no <!-- report:{name} --> block")
    (ROOT / "README.md").write_text(readme)
    figures = sorted(report_dir.glob(FIGURES))
    if not figures:
        sys.exit(f"{report_dir} has no {FIGURES}: run the default pipeline first")
    for figure in figures:
        shutil.copyfile(figure, ROOT / "docs" / figure.name)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("zoomshot-out/report"))
