"""`pipeline export RUN`: a fitted run (or CLIP itself) as a folder that `zoomshot.load_model` reads."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from zoomshot.cache.errors import PipelineError

from .config import Config
from .stage import StageCommand, say


def writable_out(path: Path, option: str = "--out") -> Path:
    """An output path whose folder exists (or can be made) and takes files, or one line saying so."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise PipelineError(
            f"cannot write {option} {path} ({e.strerror or e}): give a path in a writable folder"
        ) from None
    return path


def export_dir(cfg: Config, run: str) -> Path:
    """Where `pipeline export RUN` puts a run without --out (and where `predict --model RUN` looks)."""
    return cfg.project.path("runs_dir").parent / "exports" / run


@click.command("export", cls=StageCommand)
@click.argument("run")
@click.option("--out", type=click.Path(file_okay=False), help="Export folder [default: exports/RUN beside runs_dir].")
@click.pass_context
def export(ctx: click.Context, run: str, out: str | None) -> None:
    """Export RUN (a run name, or the [clip] name for CLIP itself) as a folder with the encoder's and
    CLIP's references, the maps and their provenance; load it with `zoomshot.load_model(DIR)`."""
    from zoomshot.export.package import export_model

    cfg: Config = ctx.obj
    target = Path(out) if out else export_dir(cfg, run)
    export_model(cfg.project, run, writable_out(target), say)
    click.echo(f"export: {run} -> {target} (load it with zoomshot.load_model({str(target)!r}))")
