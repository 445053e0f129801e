"""`pipeline`: extract -> fit -> evaluate -> report over one feature cache.

Every stage reads pipeline.toml (`--config PATH`, default ./pipeline.toml); a command-line option
overrides the same key of the stage's table (click `default_map`). Bad input is one line, exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from zoomshot.cache.errors import PipelineError

from . import config as C


def _peek_config(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


class StageCommand(click.Command):
    """Loads the config before parsing, so the stage's table becomes the options' defaults."""

    def __init__(self, *args, section: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.section = section
        self.params.append(click.Option(["--config"], type=click.Path(dir_okay=False), expose_value=False,
                                        help="Config file [default: ./pipeline.toml]."))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        root = ctx.find_root()
        path = _peek_config(args) or root.params.get("config")
        cfg = C.load(Path(path) if path else None)
        ctx.obj = cfg
        if self.section:
            ctx.default_map = {**C.section_defaults(getattr(cfg, self.section)), **(ctx.default_map or {})}
        return super().parse_args(ctx, args)


def _apply(ctx: click.Context, section: str, values: dict) -> C.Config:
    """The config with this stage's table replaced by the parsed option values."""
    cfg: C.Config = ctx.obj
    table = getattr(cfg, section)
    fields = C.section_defaults(table)
    setattr(cfg, section, C.with_overrides(table, {k: v for k, v in values.items() if k in fields}))
    return cfg


def _multi(*names: str, help: str, type=str):
    return click.option(*names, multiple=True, type=type, help=help + " (repeat the option for several).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", type=click.Path(dir_okay=False), help="Config file [default: ./pipeline.toml].")
@click.version_option(package_name="zoomshot-pipeline")
def cli(config: str | None) -> None:
    """Zoom-shot on a feature cache: give a frozen vision encoder CLIP's zero-shot ability by
    training two linear maps on features extracted once.

    \b
      pipeline extract    run CLIP and the encoders over the images once -> HDF5 cache
      pipeline fit        train the maps from cached tensors (a sweep on dask)
      pipeline evaluate   zero-shot scores of every run from cached test features
      pipeline report     one table (CSV / Markdown / JSON) over every result
      pipeline run        all four in turn
      pipeline cache ...  ls | info | verify | rm | import
    """


# --------------------------------------------------------------------------------------------- stages
@cli.command(cls=StageCommand, section="extract")
@_multi("--splits", help="DATASET:SPLIT to extract")
@click.option("--fraction", type=float, help="Nested subset of each split to extract, in (0, 1].")
@click.option("--subset-seed", type=int, help="Seed of the subset permutation.")
@click.option("--batch-size", type=int, help="Images per batch (all encoders see the same batch).")
@click.option("--num-workers", type=int, help="DataLoader workers decoding images.")
@click.option("--device", help="cpu, cuda, cuda:N or auto.")
@click.option("--on-bad-image", type=click.Choice(["skip", "fail"]), help="Unreadable images: skip or stop.")
@click.option("--scheduler", help="dask.distributed address: shard the splits over its (GPU) workers.")
@click.option("--shards", type=int, help="Shards per split on a scheduler (0 = one per worker).")
@click.option("--progress/--no-progress", default=True, help="Progress bars.")
@click.pass_context
def extract(ctx: click.Context, progress: bool, **values) -> None:
    """Extract features of every configured split with CLIP and every encoder (resumable)."""
    do_extract(_apply(ctx, "extract", values), progress)


def do_extract(cfg: C.Config, progress: bool = True) -> None:
    from zoomshot.extract.runner import run_extract
    written = run_extract(cfg, progress=progress)
    n = sum(len(v) for v in written.values())
    click.echo(f"extract: {n} cache file(s) written" + ("" if n else " (everything was cached already)"))


@cli.command(cls=StageCommand, section="fit")
@_multi("--train", help="Training data DATASET:SPLIT, or a mix A:train+B:train")
@_multi("--encoders", help="Encoder names (default: every encoder)")
@_multi("--variants", help="Loss sets / baselines to run (see `[fit.definitions]`)")
@_multi("--fractions", type=float, help="Data fractions")
@_multi("--epochs", type=int, help="Epochs")
@_multi("--seeds", type=int, help="Seeds")
@click.option("--device", help="Device of the trainer (cpu, cuda).")
@click.option("--scheduler", help="dask.distributed scheduler address (tcp://host:port); empty = threads.")
@click.option("--workers", type=int, help="Threads of the local dask scheduler.")
@click.option("--dry-run", is_flag=True, help="List the runs of the grid and stop.")
@click.pass_context
def fit(ctx: click.Context, dry_run: bool, **values) -> None:
    """Train maps for every run of the grid from cached features; finished runs are skipped."""
    if do_fit(_apply(ctx, "fit", values), dry_run):
        sys.exit(1)


def do_fit(cfg: C.Config, dry_run: bool = False) -> int:
    """Runs the sweep; returns how many runs failed (each is reported, the others go on)."""
    from zoomshot.fit.sweep import check_inputs, expand, run_sweep
    specs = expand(cfg)
    if dry_run:
        for s in specs:
            click.echo(f"{s['name']}  {s['encoder']:<12} {s['variant']:<22} train={'+'.join(s['train'])} "
                       f"fraction={s['fraction']} epochs={s['params'].get('epochs', '-')} seed={s['seed']}")
        return 0
    check_inputs(specs)
    results = run_sweep(specs, cfg.fit.scheduler, cfg.fit.workers, on_result=_print_run(specs))
    counts = {k: sum(r["status"] == k for r in results) for k in ("done", "skipped", "failed")}
    click.echo(f"fit: {counts['done']} done, {counts['skipped']} already finished, {counts['failed']} failed")
    return counts["failed"]


def _print_run(specs: list[dict]):
    by_name = {s["name"]: s for s in specs}

    def show(r: dict) -> None:
        s = by_name[r["name"]]
        extra = f" ({r['wall_time_s']} s)" if "wall_time_s" in r else f": {r['error']}" if "error" in r else ""
        click.echo(f"  {r['status']:<8} {r['name']} {s['encoder']} {s['variant']} fraction={s['fraction']}{extra}")
    return show


@cli.command(cls=StageCommand, section="evaluate")
@_multi("--test", help="Test data DATASET:SPLIT")
@_multi("--runs", help="Run names to evaluate (default: every finished run)")
@click.option("--chunk-rows", type=int, help="Rows per streamed chunk of test features.")
@click.option("--per-class/--no-per-class", default=None, help="Also write each class's accuracy.")
@click.pass_context
def evaluate(ctx: click.Context, **values) -> None:
    """Score every finished run (and CLIP) on cached test features; one JSON per (run, dataset)."""
    do_evaluate(_apply(ctx, "evaluate", values))


def do_evaluate(cfg: C.Config) -> None:
    from zoomshot.evaluate.scoring import run_evaluate
    written = run_evaluate(cfg, progress=click.echo)
    click.echo(f"evaluate: {len(written)} result file(s) written")
    if cfg.evaluate.adapters:
        from zoomshot.evaluate.adaptation import run_adapters, summary_line
        from zoomshot.evaluate.scoring import finished_runs
        adapted = run_adapters(cfg, finished_runs(cfg.path("runs_dir"), cfg.evaluate.runs),
                               lambda path, result: click.echo(summary_line(result)), progress=click.echo)
        click.echo(f"evaluate: {len(adapted)} adapter result file(s) written "
                   f"({', '.join(cfg.evaluate.adapters)}; support {cfg.evaluate.support})")


@cli.command(cls=StageCommand, section="report")
@_multi("--encoders", help="Only these encoders")
@_multi("--datasets", help="Only these datasets")
@_multi("--methods", help="Only these methods or variants")
@click.option("--plots/--no-plots", default=True, help="PNG plots beside the tables.")
@click.pass_context
def report(ctx: click.Context, plots: bool, **values) -> None:
    """Merge every result JSON into results.csv / .md / .json, draw the plots, print the table."""
    do_report(_apply(ctx, "report", values), plots)


def do_report(cfg: C.Config, plots: bool = True) -> None:
    from zoomshot.evaluate.report import format_markdown, load_results, summary_rows, write_report
    results_dir = cfg.path("results_dir")
    if not results_dir.is_dir():
        raise PipelineError(f"no results under {results_dir}: run `pipeline evaluate` first")
    r = cfg.report
    results = load_results(results_dir, r.encoders or None, r.datasets or None, r.methods or None)
    if not results:
        raise PipelineError(f"no result matches the filters under {results_dir}")
    paths = list(write_report(results, cfg.path("report_dir")).values())
    if plots:
        from zoomshot.evaluate.plots import write_plots
        from zoomshot.evaluate.scoring import projection_points
        paths += write_plots(results, cfg.path("runs_dir"), cfg.path("report_dir"),
                             projection_points(cfg, results))
    click.echo(format_markdown(summary_rows(results)))
    click.echo(f"report: {len(paths)} files in {cfg.path('report_dir')} "
               f"({', '.join(p.name for p in paths)})")


@cli.command(cls=StageCommand, name="run")
@click.option("--progress/--no-progress", default=True, help="Progress bars.")
@click.pass_context
def run_all(ctx: click.Context, progress: bool) -> None:
    """extract, fit, evaluate and report, each with the config's settings. Runs that fail to fit are
    reported, the others are still evaluated, and the exit code is 1."""
    cfg: C.Config = ctx.obj
    click.echo("== extract")
    do_extract(cfg, progress)
    click.echo("== fit")
    failed = do_fit(cfg)
    click.echo("== evaluate")
    do_evaluate(cfg)
    click.echo("== report")
    do_report(cfg)
    if failed:
        sys.exit(1)


from .cache_cmd import cache  # noqa: E402

cli.add_command(cache)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except PipelineError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted: re-run the same command to resume", err=True)
        sys.exit(130)
