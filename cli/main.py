"""`pipeline`: extract -> fit -> evaluate -> report over one feature cache.

Every stage reads pipeline.toml (`--config PATH`, default ./pipeline.toml); a command-line option
overrides the same key of the stage's table (click `default_map`). The CLI only parses, merges and
calls the stages. Bad input is one line and exit 2; Ctrl-C is one line and exit 130.

Fast to start: this module and the config import no torch, h5py or stage module (each command imports
its stage when it runs, the commands of other modules are imported when called), so `--help`, `list`
and a config error take a fraction of a second (tests/test_cli_speed.py, benchmarks/cli_speed.py).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings

import click

from zoomshot.cache.errors import PipelineError

from .config import Config
from .stage import StageCommand, apply, multi, say, writable

INTERRUPTED = "interrupted: re-run the same command to resume"

#: Commands defined in other modules, as "module:attribute", imported only when called.
COMMANDS = {
    "cache": "zoomshot.cli.cache_cmd:cache",
    "list": "zoomshot.cli.list_cmd:list_registries",
    "export": "zoomshot.cli.export_cmd:export",
    "predict": "zoomshot.cli.predict_cmd:predict",
    "export-wds": "zoomshot.cli.benchmark_cmd:export_wds",
    "clip-benchmark": "zoomshot.cli.benchmark_cmd:clip_benchmark",
    "rehearse": "zoomshot.cli.rehearse_cmd:rehearse",
    "runs": "zoomshot.cli.runs_cmd:runs",
}


def _takes_progress(command: click.Command) -> click.Command:
    """Every command takes `--progress/--no-progress`, so that a script can pass it to any: the commands
    that draw bars declare it and hand it to their stage; the others draw none and accept it. A command
    whose arguments go to another program (clip-benchmark) is left as it is."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _takes_progress(sub)
    elif not command.context_settings.get("ignore_unknown_options") and not any(
        p.name == "progress" for p in command.params
    ):
        command.params.append(
            click.Option(
                ["--progress/--no-progress"],
                default=True,
                expose_value=False,
                help="Progress bars (every command takes it; this one draws none).",
            )
        )
    return command


class LazyGroup(click.Group):
    """A group that imports a command of `COMMANDS` only when it is called (click's lazy-loading
    pattern), so that a light command never pays for what a heavy one imports."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            command = super().get_command(ctx, name)
        else:
            module, _, attribute = COMMANDS[name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
        return command and _takes_progress(command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The group's docstring lists every command; click's own list would import each one."""


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", type=click.Path(dir_okay=False), help="Config file [default: ./pipeline.toml].")
@click.version_option(package_name="zoomshot-pipeline")
def cli(config: str | None) -> None:
    """Zoom-shot on a feature cache: give a frozen vision encoder CLIP's zero-shot ability by
    training two linear maps on features extracted once.

    \b
      pipeline extract    run CLIP and the encoders over the images once -> HDF5 cache
      pipeline fit        train the maps from cached tensors (a sweep on dask)
      pipeline evaluate   zero-shot scores of the config's runs from cached test features
      pipeline report     tables and figures over the config's results
      pipeline run        all four in turn
      pipeline runs       the runs: settings, status, top-1; --prune the ones the config no longer names
      pipeline cache ...  ls | info | verify | rm | import
      pipeline list       dataset kinds, encoder families, fit variants, adapters, metrics
      pipeline export     a run (or CLIP) as a folder that zoomshot.load_model reads
      pipeline predict    top-k classes of new images through an export
      pipeline export-wds a cached split in CLIP_benchmark's webdataset layout
      pipeline clip-benchmark ...  CLIP_benchmark's CLI with the `zoomshot` model type
      pipeline rehearse   the config's grid at real shapes (random weights, generated images)
    """


# --------------------------------------------------------------------------------------------- stages
@cli.command(cls=StageCommand, section="extract")
@multi("--splits", help="DATASET:SPLIT to extract")
@click.option("--fraction", type=float, help="Nested subset of each split to extract, in (0, 1].")
@click.option("--subset-seed", type=int, help="Seed of the subset permutation.")
@click.option("--batch-size", type=int, help="Images per batch (all encoders see the same batch).")
@click.option("--num-workers", type=int, help="DataLoader workers decoding images.")
@click.option("--device", help="cpu, cuda, cuda:N or auto.")
@click.option("--on-bad-image", type=click.Choice(["skip", "fail"]), help="Unreadable images: skip or stop.")
@click.option("--scheduler", help="dask.distributed address: shard the splits over its (GPU) workers.")
@click.option("--cluster", help="Start a dask cluster for this extraction: local-cuda, slurm or pbs (docs/scale.md).")
@click.option("--shards", type=int, help="Shards per split on a scheduler (0 = one per worker).")
@click.option("--progress/--no-progress", default=True, help="Progress bars.")
@click.pass_context
def extract(ctx: click.Context, progress: bool, **values) -> None:
    """Extract features of every configured split with CLIP and every encoder (resumable)."""
    do_extract(apply(ctx, "extract", values), progress)


def do_extract(cfg: Config, progress: bool = True, timings: dict | None = None) -> None:
    from zoomshot.extract.runner import run_extract

    writable(cfg.project.path("cache_dir"), "cache_dir")
    written = run_extract(cfg.project, cfg.extract, progress=progress, say=say, timings=timings)
    n = sum(len(v) for v in written.values())
    click.echo(f"extract: {n} cache file(s) written" + ("" if n else " (everything was cached already)"))


@cli.command(cls=StageCommand, section="fit")
@multi("--train", help="Training data DATASET:SPLIT, or a mix A:train+B:train")
@multi("--encoders", help="Encoder names (default: every encoder)")
@multi("--variants", help="Loss sets / baselines to run (see `[fit.definitions]`)")
@multi("--presets", help="Recipes of the Zoom-shot variants: tuned, paper (`pipeline list presets`)")
@multi("--fractions", type=float, help="Data fractions")
@multi("--epochs", type=int, help="Epochs")
@multi("--seeds", type=int, help="Seeds")
@click.option("--device", help="Device of the trainer (cpu, cuda, auto).")
@click.option("--scheduler", help="dask.distributed scheduler address (tcp://host:port); empty = threads.")
@click.option("--workers", type=int, help="Threads of the local dask scheduler.")
@click.option("--threads", type=int, help="torch intra-op threads of each fit (its numbers depend on it).")
@click.option("--dry-run", is_flag=True, help="List the runs of the grid and stop.")
@click.option(
    "--debug",
    is_flag=True,
    help="Stop at the first failing fit with its traceback (its <run>.failed.txt is written either way).",
)
@click.pass_context
def fit(ctx: click.Context, dry_run: bool, debug: bool, **values) -> None:
    """Train maps for every run of the grid from cached features; finished runs are skipped."""
    if do_fit(apply(ctx, "fit", values), dry_run, debug):
        sys.exit(1)


def do_fit(cfg: Config, dry_run: bool = False, debug: bool = False) -> int:
    """Runs the sweep; returns how many runs failed (each is reported, the others go on, unless `debug`:
    then the first failure is raised)."""
    from zoomshot.fit.sweep import check_inputs, expand, run_sweep

    specs = [{**s, "debug": debug} for s in expand(cfg.project, cfg.fit)]
    if dry_run:
        for s in specs:
            r = s["record"]
            click.echo(
                f"{s['name']}  {r['encoder']:<12} {r['variant']:<26} train={'+'.join(r['train'])} "
                f"fraction={r['fraction']} epochs={r['epochs'] or '-'} seed={r['seed']}"
            )
        return 0
    check_inputs(specs, cfg.fit.scheduler)
    writable(cfg.project.path("runs_dir"), "runs_dir")
    results = run_sweep(specs, cfg.fit.scheduler, cfg.fit.workers, on_result=_print_run(specs))
    counts = {k: sum(r["status"] == k for r in results) for k in ("done", "skipped", "failed")}
    click.echo(f"fit: {counts['done']} done, {counts['skipped']} already finished, {counts['failed']} failed")
    return counts["failed"]


def _print_run(specs: list[dict]):
    """A line per run as it ends, counted against the grid (the sweep's progress)."""
    by_name = {s["name"]: s["record"] for s in specs}
    ended = iter(range(1, len(specs) + 1))
    width = len(str(len(specs)))

    def show(r: dict) -> None:
        s = by_name[r["name"]]
        extra = f" ({r['wall_time_s']} s)" if "wall_time_s" in r else f": {r['error']}" if "error" in r else ""
        click.echo(
            f"  [{next(ended):>{width}}/{len(specs)}] {r['status']:<8} {r['name']} {s['encoder']} "
            f"{s['variant']} fraction={s['fraction']}{extra}"
        )

    return show


@cli.command(cls=StageCommand, section="evaluate")
@multi("--test", help="Test data DATASET:SPLIT")
@multi("--runs", help="Run names to evaluate (default: the runs of the config's grid)")
@click.option("--all-runs", is_flag=True, default=None, help="Every run folder, also those the grid no longer names.")
@click.option("--chunk-rows", type=int, help="Rows per streamed chunk of test features.")
@click.option("--per-class/--no-per-class", default=None, help="Also write each class's accuracy.")
@click.option("--progress/--no-progress", default=True, help="Progress bars.")
@click.option("--verbose", is_flag=True, help="Also a line per adapted result (its hyper-parameters).")
@click.pass_context
def evaluate(ctx: click.Context, progress: bool, verbose: bool, **values) -> None:
    """Score every finished run (and CLIP) on cached test features; one JSON per (run, dataset), and one
    table of top-1 at the end. Exits 1 when it had to skip a run or a test split (each is one line saying why)."""
    if do_evaluate(apply(ctx, "evaluate", values), progress, verbose):
        sys.exit(1)


def do_evaluate(cfg: Config, progress: bool = True, verbose: bool = False) -> int:
    """Evaluates and prints one table of what it scored; returns how many (run, test split) pairs were skipped."""
    from zoomshot.evaluate.adaptation import run_adapters, summary_line
    from zoomshot.evaluate.scoring import open_runs, run_evaluate
    from zoomshot.evaluate.summary import summary_table

    project, ev = cfg.project, cfg.evaluate
    writable(project.path("results_dir"), "results_dir")
    from .runs_cmd import runs_to_evaluate

    names, skipped = runs_to_evaluate(cfg)
    runs, unreadable = open_runs(project, names, say)
    skipped += unreadable
    outcome = run_evaluate(project, ev, runs, say=say, progress=progress)
    skipped += outcome.skipped
    written = list(outcome.written)
    click.echo(
        f"evaluate: {len(outcome.written)} result file(s) written"
        + (f", {skipped} skipped (see above)" if skipped else "")
    )
    if ev.adapters:
        adapted = run_adapters(
            project, ev, runs, (lambda path, result: click.echo(summary_line(result))) if verbose else None, say=say
        )
        click.echo(
            f"evaluate: {len(adapted.written)} adapter result file(s) written "
            f"({', '.join(ev.adapters)}; support {', '.join(ev.supports)})"
        )
        skipped += adapted.skipped
        written += adapted.written
    if written:
        click.echo(
            f"evaluate: top-1 (%) of what it scored, seeds averaged\n"
            f"{summary_table([json.loads(p.read_text()) for p in written])}"
        )
    return skipped


@cli.command(cls=StageCommand, section="report")
@multi("--encoders", help="Only these encoders")
@multi("--datasets", help="Only these datasets")
@multi("--methods", help="Only these methods or variants")
@click.option("--metric", help="The main table's metric (acc1 adds a column per class group).")
@click.option(
    "--pivot",
    help="The main table's ROWS:COLUMNS, fields among encoder, dataset, variant, fraction, "
    "epochs, metric [default: variant:encoder,dataset].",
)
@click.option("--fraction", type=float, help="The fraction shown where it is not pivoted (0 = the largest).")
@click.option("--epochs", type=int, help="The epochs shown where they are not pivoted (0 = the most).")
@multi("--runs", help="Runs whose loss terms to draw (default: per encoder and variant, the first seed)")
@click.option("--all-runs", is_flag=True, default=None, help="Also runs outside the grid (labelled old run).")
@click.option("--plots/--no-plots", default=True, help="Figures (PNG and PDF) beside the tables.")
@click.pass_context
def report(ctx: click.Context, plots: bool, **values) -> None:
    """Merge every result JSON into the tables (Markdown, CSV, LaTeX) and figures; print the main table."""
    do_report(apply(ctx, "report", values), plots)


def do_report(cfg: Config, plots: bool = True) -> None:
    from zoomshot.evaluate.report import load_results, replace_outputs, select_results, summary_rows, write_summary
    from zoomshot.evaluate.tables import Pivot, build_tables, to_markdown, write_tables

    project = cfg.project
    results_dir = project.path("results_dir")
    if not results_dir.is_dir():
        raise PipelineError(f"no results under {results_dir}: run `pipeline evaluate` first")
    r = cfg.report
    from .runs_cmd import grid_names

    results = select_results(
        load_results(results_dir, r.encoders or None, r.datasets or None, r.methods or None),
        grid_names(cfg),
        r.all_runs,
    )
    if not results:
        raise PipelineError(f"no result matches the filters under {results_dir}")
    rows = summary_rows(results)
    chosen = {"fraction": r.fraction or None, "epochs": r.epochs or None}
    tables = build_tables(rows, r.metric, Pivot.parse(r.pivot), chosen)
    report_dir = writable(project.path("report_dir"), "report_dir")
    paths = write_summary(rows, report_dir) + write_tables(tables, report_dir)
    if plots:
        from zoomshot.evaluate.plots import write_plots
        from zoomshot.evaluate.scoring import gap_views

        paths += write_plots(
            results,
            project.path("runs_dir"),
            report_dir,
            gap_views(project, cfg.evaluate.test, results),
            chosen,
            r.runs,
        )
    stale = replace_outputs(report_dir, paths)
    click.echo(to_markdown(tables["table"]))
    click.echo(
        f"report: {len(paths)} files in {report_dir} ({', '.join(p.name for p in paths)})"
        + (f"; removed {len(stale)} file(s) of the previous report it no longer makes" if stale else "")
    )


@cli.command(cls=StageCommand, name="run")
@click.option("--progress/--no-progress", default=True, help="Progress bars.")
@click.option("--verbose", is_flag=True, help="Also evaluate's line per adapted result.")
@click.pass_context
def run_all(ctx: click.Context, progress: bool, verbose: bool) -> None:
    """extract, fit, evaluate and report, each with the config's settings. Runs that fail to fit are
    reported, the others are still evaluated, and the exit code is 1 (also when evaluate skipped any)."""
    cfg: Config = ctx.obj
    click.echo("== extract")
    do_extract(cfg, progress)
    click.echo("== fit")
    failed = do_fit(cfg)
    click.echo("== evaluate")
    failed += do_evaluate(cfg, progress, verbose)
    click.echo("== report")
    do_report(cfg)
    if failed:
        sys.exit(1)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main() -> None:
    """The console script: click without its own handling of Ctrl-C and errors, so that each ends in
    the project's one line and exit code."""
    warnings.formatwarning = _one_line_warning
    try:
        code = cli.main(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except PipelineError as e:
        click.echo(f"error: {e}", err=True)
        store = sys.modules.get("zoomshot.cache.store")  # imported by every command that writes HDF5
        if store and store.writes_failed():  # HDF5 cannot shut down cleanly after a failed write (a full disk)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        sys.exit(2)
    except OSError as e:
        click.echo(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
