"""What every `pipeline` command shares: the config loaded before option parsing (so the stage's
table becomes the options' defaults), the merge of the options into it, and output-folder checks."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from zoomshot.cache import atomic
from zoomshot.cache.errors import DiskFull, PipelineError, refused_write

from .config import Config, load, section_defaults, with_overrides


def _peek_config(ctx: click.Context, args: list[str]) -> str | None:
    """`--config PATH` of this command's arguments, or of a parent group's."""
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    while ctx is not None:
        if ctx.params.get("config"):
            return ctx.params["config"]
        ctx = ctx.parent
    return None


class StageCommand(click.Command):
    """Loads the config before parsing, so the stage's table becomes the options' defaults (and a broken
    config does not stop `--help`)."""

    def __init__(self, *args, section: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.section = section
        self.params.append(
            click.Option(
                ["--config"],
                type=click.Path(dir_okay=False),
                expose_value=False,
                help="Config file [default: ./pipeline.toml].",
            )
        )

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not any(a in ctx.help_option_names for a in args):
            path = _peek_config(ctx, args)
            ctx.obj = load(Path(path) if path else None)
            if self.section:
                ctx.default_map = {**section_defaults(getattr(ctx.obj, self.section)), **(ctx.default_map or {})}
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        """The stage; a write the disk refused, wherever in it, becomes one line (exit 2), not a traceback."""
        try:
            return super().invoke(ctx)
        except PipelineError:
            raise
        except Exception as e:
            if (cause := refused_write(e)) is None:
                raise
            raise DiskFull(cause) from None


def apply(ctx: click.Context, section: str, values: dict) -> Config:
    """The config with this stage's table replaced by the parsed option values."""
    cfg: Config = ctx.obj
    table = getattr(cfg, section)
    known = section_defaults(table)
    setattr(cfg, section, with_overrides(table, {k: v for k, v in values.items() if k in known}, section))
    return cfg


def writable(folder: Path, key: str) -> Path:
    """An output folder that exists and takes files, or one line naming the config key to fix. Temporary
    files that a killed command left in it are removed (`atomic.remove_stale`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise PipelineError(f"cannot write to {folder} ({e.strerror or e}): fix paths.{key} in the config") from None
    atomic.remove_stale(folder)
    return folder


def multi(*names: str, help: str, type=str):
    return click.option(*names, multiple=True, type=type, help=help + " (repeat the option for several).")


def say(line: str) -> None:
    click.echo(line)
