"""`pipeline cache ls | info | verify | rm | import`. Each command imports the cache modules (h5py) when it
runs, so `pipeline cache --help` stays light."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.settings import Project

from .config import Config
from .stage import StageCommand


def _project(ctx: click.Context) -> Project:
    cfg: Config = ctx.obj
    return cfg.project


def _resolve(project: Project, name: str) -> Path:
    """A cache file given by path or by its name inside the cache."""
    from zoomshot.cache import catalog

    p = Path(name)
    if p.is_file():
        return p
    found = catalog.select(project.path("cache_dir"), [name])
    if not found:
        raise PipelineError(f"no cache file {name!r} under {project.path('cache_dir')} (see `pipeline cache ls`)")
    return found[0]


@click.group()
@click.option("--config", type=click.Path(dir_okay=False), help="Config file [default: ./pipeline.toml].")
def cache(config: str | None) -> None:
    """Inspect and manage the feature cache (`cache_dir` of the config)."""


@cache.command("ls", cls=StageCommand)
@click.pass_context
def ls(ctx: click.Context) -> None:
    """List cache files with their rows, width, size and state."""
    from zoomshot.cache import catalog

    cache_dir = _project(ctx).path("cache_dir")
    files = catalog.cache_files(cache_dir)
    if not files:
        click.echo(f"(empty) {cache_dir}")
    for p in files:
        d = catalog.describe(p)
        click.echo(
            f"{d.get('state', '?'):<13} {d.get('rows', '-'):>8} x {d.get('dim', '-'):<5} "
            f"{d['bytes'] / 2**20:8.2f} MiB  {d['kind']}/{d['file']}"
        )


@cache.command(cls=StageCommand)
@click.argument("name")
@click.pass_context
def info(ctx: click.Context, name: str) -> None:
    """Show a file's provenance (all attributes) as JSON, with the problems a cheap check finds
    (exit 1 when there are any)."""
    from zoomshot.cache import catalog

    facts = catalog.info(_resolve(_project(ctx), name))
    click.echo(json.dumps(facts, indent=1, default=str))
    if facts["problems"]:
        sys.exit(1)


@cache.command(cls=StageCommand)
@click.argument("names", nargs=-1)
@click.pass_context
def verify(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Check completeness, schema, shards, row counts, finiteness and checksums (all files by default)."""
    from zoomshot.cache import catalog

    project = _project(ctx)
    files = [_resolve(project, n) for n in names] or catalog.cache_files(project.path("cache_dir"))
    bad = busy = 0
    for p in files:
        if state := catalog.in_use(p):  # its writer checks it when done; reading it now proves nothing
            busy += 1
            click.echo(f"busy {p.name}: {state} by another process")
            continue
        problems = catalog.verify(p)
        bad += bool(problems)
        click.echo(f"{'ok' if not problems else 'BAD':<4} {p.name}" + "".join(f"\n     {m}" for m in problems))
    click.echo(f"verify: {len(files) - bad - busy} ok, {bad} with problems" + (f", {busy} busy" if busy else ""))
    if bad:
        sys.exit(1)


@cache.command(cls=StageCommand)
@click.argument("patterns", nargs=-1, required=True)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.pass_context
def rm(ctx: click.Context, patterns: tuple[str, ...], dry_run: bool) -> None:
    """Remove cache files whose names match the glob PATTERNS (e.g. 'shapes_train_*'), each with the list of
    images it skipped beside it. A file that another process is writing is left alone (exit 1)."""
    from zoomshot.cache import catalog, layout, locks

    files = catalog.select(_project(ctx).path("cache_dir"), list(patterns))
    if not files:
        raise PipelineError(f"no cache file matches {' '.join(patterns)} (see `pipeline cache ls`)")
    busy = 0
    for p in files:
        target = p.with_suffix("") if p.suffix == ".partial" else p
        with locks.trying(target) as free:
            if not free:
                busy += 1
                click.echo(f"kept {p.name}: another process is writing it")
                continue
            if not dry_run:
                p.unlink()
                layout.bad_list_path(p).unlink(missing_ok=True)
        click.echo(f"{'would remove' if dry_run else 'removed'} {p.name}")
    if busy:
        sys.exit(1)


@cache.command("import", cls=StageCommand)
@click.argument("array", type=click.Path(dir_okay=False))
@click.option("--encoder", help="Encoder name of image features (an [[encoders]] name or the [clip] name).")
@click.option("--dataset", help="Dataset name (a [[datasets]] name); not needed for --text classfree.")
@click.option("--split", help="Split of image features, e.g. train or test.")
@click.option("--labels", type=click.Path(dir_okay=False), help="Labels (N,) array; -1 = unknown.")
@click.option("--index", type=click.Path(dir_okay=False), help="Dataset index (N,) of each row [default: 0..N-1].")
@click.option(
    "--text",
    type=click.Choice(["class-prompts", "classfree"]),
    help="Import CLIP text embeddings (K, d) instead of image features.",
)
@click.option(
    "--prompts",
    type=click.Path(dir_okay=False),
    help="Text file, one prompt a line (K lines) [classfree default: the [clip] classfree_prompts file].",
)
@click.option("--classnames", type=click.Path(dir_okay=False), help="Text file, one class name a line.")
@click.option(
    "--class-of-prompt",
    type=click.Path(dir_okay=False),
    help="(K,) class index of each prompt [default: K/C templates per class, class-major].",
)
@click.option("--key", default="features", help="Dataset/entry name inside .h5 or .pt files.")
@click.pass_context
def import_(
    ctx: click.Context,
    array: str,
    encoder: str | None,
    dataset: str | None,
    split: str | None,
    labels: str | None,
    index: str | None,
    text: str | None,
    prompts: str | None,
    classnames: str | None,
    class_of_prompt: str | None,
    key: str,
) -> None:
    """Bring in features computed elsewhere (.npy, .h5, .pt) so `fit` and `evaluate` use them as if
    extracted: image features of one encoder on one split, or CLIP text embeddings. Every array is
    checked first (shape, dtype, NaN/Inf, labels against the classes, widths against CLIP's)."""
    from zoomshot.cache import catalog, importer

    project = _project(ctx)
    data = catalog.check_features(catalog.load_array(Path(array), key), f"the array in {array}")
    if text == "classfree":
        target = importer.import_classfree(project, data, prompts, click.echo)
    elif text:
        if not dataset:
            raise PipelineError("class-prompt embeddings need --dataset (a [[datasets]] name)")
        target = importer.import_class_prompts(project, data, dataset, prompts, classnames, class_of_prompt)
    else:
        if not (encoder and split and dataset):
            raise PipelineError("image features need --encoder, --dataset and --split (or --text for text embeddings)")
        target = importer.import_image_features(
            project, data, encoder, dataset, split, labels, index, classnames, array, click.echo
        )
    click.echo(f"imported {data.shape[0]} x {data.shape[1]} -> {target}")
