"""`pipeline runs`: every run of the config's grid and every run folder, with its settings, status and
top-1; `--prune` removes what the config no longer names. Also which runs `evaluate` and `report` work
on: the config's grid (the runs `pipeline fit --dry-run` names), older ones only when asked.
"""

from __future__ import annotations

import difflib
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from zoomshot.cache.errors import PipelineError

from .config import Config
from .stage import StageCommand, multi, say

FINISHED, FAILED, STALE, UNFITTED, NOT_IN_GRID = "finished", "failed", "stale", "unfitted", "not-in-grid"
STATUSES = (FINISHED, FAILED, STALE, UNFITTED, NOT_IN_GRID)
FAILED_SUFFIX = ".failed.txt"


def grid(cfg: Config) -> list[dict]:
    """The runs of the config's `[fit]` grid (their specs, as `pipeline fit` runs them)."""
    from zoomshot.fit.sweep import expand

    return expand(cfg.project, cfg.fit)


def runs_to_evaluate(cfg: Config) -> tuple[list[str] | None, int]:
    """The run names `evaluate` scores (None: every run folder, `--all-runs`) and how many runs of the grid
    it leaves out because they are not fitted (said in one line)."""
    ev = cfg.evaluate
    if ev.runs:
        return list(ev.runs), 0
    if ev.all_runs:
        return None, 0
    runs_dir = cfg.project.path("runs_dir")
    specs = grid(cfg)
    unfitted = [s for s in specs if not (runs_dir / s["name"]).is_dir()]
    if unfitted:
        names = [f"{s['name']} ({s['record']['encoder']}, {s['record']['variant']})" for s in unfitted]
        say(
            f"skip: {len(unfitted)} run(s) of the config's grid not fitted: {', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}: run `pipeline fit`"
        )
    return [s["name"] for s in specs if (runs_dir / s["name"]).is_dir()], len(unfitted)


def grid_names(cfg: Config) -> set[str]:
    return {s["name"] for s in grid(cfg)}


@dataclass
class RunRow:
    """One line of `pipeline runs`."""

    name: str
    encoder: str | None = None
    variant: str | None = None
    preset: str | None = None
    train: list[str] = field(default_factory=list)
    fraction: float | None = None
    epochs: int | None = None
    seed: int | None = None
    status: str = UNFITTED
    why: str = ""
    top1: dict[str, float] = field(default_factory=dict)  # test split -> zero-shot top-1 of its result file

    def variant_names(self) -> tuple[str, ...]:
        """What `--variant` matches: the variant's label (`mse (paper)`) and its name (`mse`)."""
        return (self.variant, self.variant.split(" (")[0]) if self.variant else ()


def _settings(record: dict) -> dict:
    return {k: record.get(k) for k in ("encoder", "variant", "preset", "train", "fraction", "epochs", "seed")}


def _failure(path: Path) -> str:
    """The last line of a failed fit's traceback: the exception and its message."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError as e:
        return f"its traceback cannot be read ({e.strerror or e})"
    return lines[-1].strip() if lines else "no traceback kept"


def _grid_status(spec: dict, runs_dir: Path) -> tuple[str, str]:
    from zoomshot.cache import store
    from zoomshot.cache.runs import stale_reason
    from zoomshot.fit.runs import failure_file, input_files

    run_dir = runs_dir / spec["name"]
    if run_dir.is_dir():
        try:
            checksums = {p.name: store.stored_checksum(p) for p in input_files(spec)}
        except PipelineError as e:
            return STALE, f"its inputs cannot be checked: {e}"
        reason = stale_reason(run_dir, checksums, spec["record"]["revision"])
        if reason is None:
            return FINISHED, ""
    else:
        reason = "not fitted yet"
    if failure_file(run_dir).is_file():
        return FAILED, _failure(failure_file(run_dir))
    return (STALE, reason) if run_dir.is_dir() else (UNFITTED, reason)


def _other_row(name: str, runs_dir: Path) -> RunRow:
    """A run folder (or a failed fit's traceback) that the config's grid does not name."""
    from zoomshot.cache.runs import DamagedRun, read_run

    if not (runs_dir / name).is_dir():
        return RunRow(name, status=NOT_IN_GRID, why=f"failed: {_failure(runs_dir / (name + FAILED_SUFFIX))}")
    try:
        return RunRow(name, **_settings(read_run(runs_dir / name).record), status=NOT_IN_GRID)
    except DamagedRun as e:
        return RunRow(name, status=NOT_IN_GRID, why=e.what)


def _top1(results_dir: Path) -> dict[str, dict[str, float]]:
    """Per run, the zero-shot top-1 of each of its result files (adapters' results left out)."""
    import warnings

    out: dict[str, dict[str, float]] = {}
    if not results_dir.is_dir():
        return out
    from zoomshot.evaluate.report import load_results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a broken result file is `pipeline report`'s to say
        results = load_results(results_dir)
    for r in results:
        if "base_variant" not in r and r.get("run") and r["metrics"].get("acc1") is not None:
            out.setdefault(r["run"], {})[f"{r['dataset']}:{r.get('split', '')}"] = float(r["metrics"]["acc1"])
    return out


def list_runs(cfg: Config) -> list[RunRow]:
    """The grid's runs in grid order, then every other run folder or failed fit under runs_dir by name."""
    runs_dir = cfg.project.path("runs_dir")
    rows = [
        RunRow(s["name"], **_settings(s["record"]), **dict(zip(("status", "why"), _grid_status(s, runs_dir))))
        for s in grid(cfg)
    ]
    named = {r.name for r in rows}
    on_disk = {
        p.name.removesuffix(FAILED_SUFFIX) if p.name.endswith(FAILED_SUFFIX) else p.name
        for p in (runs_dir.iterdir() if runs_dir.is_dir() else [])
        if not p.name.startswith(".") and (p.is_dir() or p.name.endswith(FAILED_SUFFIX))
    }
    rows += [_other_row(name, runs_dir) for name in sorted(on_disk - named)]
    scores = _top1(cfg.project.path("results_dir"))
    for r in rows:
        r.top1 = scores.get(r.name, {})
    return rows


def _text(value) -> str:
    if value is None:
        return "-"
    return "+".join(value) if isinstance(value, list) else str(value)


def table(rows: list[RunRow]) -> str:
    """The rows as aligned columns, one top-1 column (%) per test split, the reason last."""
    splits = sorted({s for r in rows for s in r.top1})
    head = [
        "RUN",
        "ENCODER",
        "VARIANT",
        "TRAIN",
        "FRACTION",
        "EPOCHS",
        "SEED",
        "STATUS",
        *(f"TOP-1 {s}" for s in splits),
        "WHY",
    ]
    body = [
        [
            r.name,
            *map(_text, (r.encoder, r.variant, r.train, r.fraction, r.epochs, r.seed)),
            r.status,
            *(f"{100 * r.top1[s]:.1f}" if s in r.top1 else "-" for s in splits),
            r.why,
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head) - 1)]
    return "\n".join(
        ("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1]).rstrip() for line in [head, *body]
    )


def prune(cfg: Config, rows: list[RunRow]) -> int:
    """Remove each run folder, failed fit and result folder of `rows`; one another process holds is left
    (said in a line). Returns how many were removed."""
    from zoomshot.cache import locks

    runs_dir, results_dir = cfg.project.path("runs_dir"), cfg.project.path("results_dir")
    removed = 0
    for r in rows:
        with locks.trying(runs_dir / r.name) as free:
            if not free:
                say(f"kept {r.name}: another process is writing it (`pipeline fit`)")
                continue
            for path in (runs_dir / r.name, results_dir / r.name):
                shutil.rmtree(path, ignore_errors=True)
            (runs_dir / (r.name + FAILED_SUFFIX)).unlink(missing_ok=True)
            removed += 1
    return removed


def _check_filter(what: str, asked: tuple[str, ...], known: set) -> None:
    """A filter value that no run and no setting has is a typo, not an empty answer."""
    known = {k for k in known if k}
    for value in asked:
        if value not in known:
            close = difflib.get_close_matches(value, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise PipelineError(f"no run has {what} {value!r}: {hint}known: {', '.join(sorted(known)) or 'none'}")


@click.command("runs", cls=StageCommand)
@multi("--encoder", help="Only runs of this encoder")
@multi("--variant", help="Only runs of this variant (its label, e.g. `mse+cyc (paper)`, or its name)")
@multi("--status", type=click.Choice(STATUSES), help="Only runs with this status")
@multi("--fraction", type=float, help="Only runs on this fraction")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of the runs instead of the table.")
@click.option(
    "--prune",
    "do_prune",
    is_flag=True,
    help="Remove the runs the config no longer names (not-in-grid): folder, failed fit, results.",
)
@click.option("--yes", is_flag=True, help="Remove without asking (for scripts; --prune asks on a terminal).")
@click.pass_context
def runs(
    ctx: click.Context,
    encoder: tuple[str, ...],
    variant: tuple[str, ...],
    status: tuple[str, ...],
    fraction: tuple[float, ...],
    as_json: bool,
    do_prune: bool,
    yes: bool,
) -> None:
    """List the config's runs and every other run folder: settings, status (finished, failed with its
    reason, stale with why, unfitted, not-in-grid) and the zero-shot top-1 of each evaluated split.
    RUN names are what `pipeline export`, `predict --model` (once exported), `evaluate --runs` and
    `report --runs` take."""
    cfg: Config = ctx.obj
    every = list_runs(cfg)
    _check_filter("encoder", encoder, {r.encoder for r in every} | {e.name for e in cfg.project.encoders})
    _check_filter("variant", variant, {v for r in every for v in r.variant_names()})
    rows = [
        r
        for r in every
        if (not encoder or r.encoder in encoder)
        and (not status or r.status in status)
        and (not fraction or r.fraction in fraction)
        and (not variant or not set(variant).isdisjoint(r.variant_names()))
    ]
    if not do_prune:
        click.echo(json.dumps([asdict(r) for r in rows], indent=1) if as_json else table(rows) if rows else "no runs")
        return
    doomed = [r for r in rows if r.status == NOT_IN_GRID]
    if not doomed:
        click.echo("runs: nothing to remove (every run is in the config's grid)")
        return
    click.echo(
        f"runs: {len(doomed)} run(s) the config no longer names will be removed (folder, failed fit, "
        f"results):\n{table(doomed)}"
    )
    if not yes:
        if not sys.stdin.isatty():
            raise PipelineError("nothing removed: pass --yes to remove them (there is no terminal to ask on)")
        if not click.confirm("remove them?", default=False):
            click.echo("runs: nothing removed")
            return
    click.echo(f"runs: removed {prune(cfg, doomed)} of {len(doomed)} run(s)")
