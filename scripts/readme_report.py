"""Paste the default run's generated report into README.md: the tables between their markers, and the
figure README embeds copied to docs/. Run after the default pipeline:

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
FIGURE = "acc_vs_fraction_shapes.png"        # embedded from docs/


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
    shutil.copyfile(report_dir / FIGURE, ROOT / "docs" / FIGURE)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("zoomshot-out/report"))
