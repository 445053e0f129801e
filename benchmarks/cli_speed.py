"""How long the CLI takes to answer when no stage runs: `pipeline --help`, `pipeline fit --help`,
`pipeline list ...` and a typo in the config (its one-line error), each in a fresh process.

    HF_HUB_OFFLINE=1 python benchmarks/cli_speed.py [--python LABEL=INTERPRETER ...] [--repeats 5]

Each `--python` is an interpreter whose `import zoomshot` resolves to the tree to time (e.g.
`--python main=/usr/bin/python --python branch=/work/venv-x/bin/python`; default: this interpreter).
Every command runs `--repeats` times per interpreter, interpreters interleaved, in a temporary folder
holding the repository's pipeline.toml with one key misspelled (`[fit] epoch`); the median wall time
of each is printed side by side (process start and Python's own start-up included, as a user waits).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What is timed: its arguments and the exit code it must end with (a typo is exit 2, one line).
COMMANDS = {
    "pipeline --help": (["--help"], 0),
    "pipeline fit --help": (["fit", "--help"], 0),
    "pipeline list datasets": (["list", "datasets"], 0),
    "pipeline list variants": (["list", "variants"], 0),
    "pipeline cache --help": (["cache", "--help"], 0),
    "config typo (fit --dry-run)": (["fit", "--dry-run"], 2),
}


def wall_time(python: str, args: list[str], expected: int, folder: Path) -> float:
    """Seconds `pipeline ARGS` takes through `python`, from process start to exit (which must be `expected`)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [python, "-c", "from zoomshot.cli.main import main; main()", *args],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != expected:
        sys.exit(f"{python} pipeline {' '.join(args)} exited {proc.returncode}, not {expected}: {proc.stderr}")
    return seconds


def typo_config(folder: Path) -> None:
    """The repository's pipeline.toml with `epochs` misspelled in [fit] (its weights are `assets:` names)."""
    text = (ROOT / "pipeline.toml").read_text()
    (folder / "pipeline.toml").write_text(text.replace("\nepochs =", "\nepoch =", 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--python",
        action="append",
        metavar="LABEL=INTERPRETER",
        help="an interpreter to time (repeat for several) [default: this one]",
    )
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pythons = dict(p.split("=", 1) for p in args.python or [f"this={sys.executable}"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        typo_config(folder)
        times = {(c, label): [] for c in COMMANDS for label in pythons}
        for _ in range(args.repeats):
            for command, (argv, expected) in COMMANDS.items():
                for label, python in pythons.items():
                    times[command, label].append(wall_time(python, argv, expected, folder))
    print(f"median wall time of {args.repeats} fresh processes, seconds")
    print(f"{'command':<30}" + "".join(f"{label:>12}" for label in pythons))
    for command in COMMANDS:
        print(f"{command:<30}" + "".join(f"{statistics.median(times[command, label]):>12.2f}" for label in pythons))


if __name__ == "__main__":
    main()
