"""`pipeline cache ls | info | verify | rm | import`."""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from zoomshot.cache import catalog, store
from zoomshot.cache.errors import PipelineError

from . import config as C


def _cfg(ctx: click.Context) -> C.Config:
    return ctx.obj


def _resolve(cfg: C.Config, name: str) -> Path:
    """A cache file given by path or by its name inside the cache."""
    p = Path(name)
    if p.exists():
        return p
    found = catalog.select(cfg.path("cache_dir"), [name])
    if not found:
        raise PipelineError(f"no cache file {name!r} under {cfg.path('cache_dir')} (see `pipeline cache ls`)")
    return found[0]


@click.group()
@click.option("--config", type=click.Path(dir_okay=False), help="Config file [default: ./pipeline.toml].")
@click.pass_context
def cache(ctx: click.Context, config: str | None) -> None:
    """Inspect and manage the feature cache (`cache_dir` of the config)."""
    path = config or ctx.find_root().params.get("config")
    ctx.obj = C.load(Path(path) if path else None)


@cache.command("ls")
@click.pass_context
def ls(ctx: click.Context) -> None:
    """List cache files with their encoder, dataset, split, rows, width and state."""
    files = catalog.cache_files(_cfg(ctx).path("cache_dir"))
    if not files:
        click.echo(f"(empty) {_cfg(ctx).path('cache_dir')}")
    for p in files:
        d = catalog.describe(p)
        click.echo(f"{d.get('state', '?'):<10} {d.get('rows', '-'):>8} x {d.get('dim', '-'):<5} "
                   f"{d['bytes'] / 2**20:8.2f} MiB  {d['kind']}/{d['file']}")


@cache.command()
@click.argument("name")
@click.pass_context
def info(ctx: click.Context, name: str) -> None:
    """Show a file's provenance (all attributes) as JSON."""
    click.echo(catalog.info(_resolve(_cfg(ctx), name)))


@cache.command()
@click.argument("names", nargs=-1)
@click.pass_context
def verify(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Check completeness, schema, row counts, finiteness and checksums (all files by default)."""
    cfg = _cfg(ctx)
    files = [_resolve(cfg, n) for n in names] or catalog.cache_files(cfg.path("cache_dir"))
    bad = 0
    for p in files:
        problems = catalog.verify(p)
        bad += bool(problems)
        click.echo(f"{'ok' if not problems else 'BAD':<4} {p.name}" + "".join(f"\n     {m}" for m in problems))
    click.echo(f"verify: {len(files) - bad} ok, {bad} with problems")
    if bad:
        sys.exit(1)


@cache.command()
@click.argument("patterns", nargs=-1, required=True)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.pass_context
def rm(ctx: click.Context, patterns: tuple[str, ...], dry_run: bool) -> None:
    """Remove cache files whose names match the glob PATTERNS (e.g. 'shapes_train_*')."""
    files = catalog.select(_cfg(ctx).path("cache_dir"), list(patterns))
    if not files:
        raise PipelineError(f"no cache file matches {' '.join(patterns)} (see `pipeline cache ls`)")
    for p in files:
        if not dry_run:
            p.unlink()
        click.echo(f"{'would remove' if dry_run else 'removed'} {p.name}")


@cache.command("import")
@click.argument("array", type=click.Path(dir_okay=False))
@click.option("--encoder", help="Encoder name of image features (an [[encoders]] name or the [clip] name).")
@click.option("--dataset", required=True, help="Dataset name (a [[datasets]] name).")
@click.option("--split", help="Split of image features, e.g. train or test.")
@click.option("--labels", type=click.Path(dir_okay=False), help="Labels (N,) array; -1 = unknown.")
@click.option("--index", type=click.Path(dir_okay=False), help="Dataset index (N,) of each row [default: 0..N-1].")
@click.option("--text", type=click.Choice(["class-prompts", "classfree"]),
              help="Import CLIP text embeddings (K, d) instead of image features.")
@click.option("--prompts", type=click.Path(dir_okay=False), help="Text file, one prompt a line (K lines).")
@click.option("--classnames", type=click.Path(dir_okay=False), help="Text file, one class name a line.")
@click.option("--class-of-prompt", type=click.Path(dir_okay=False),
              help="(K,) class index of each prompt [default: K/C templates per class, class-major].")
@click.option("--key", default="features", help="Dataset/entry name inside .h5 or .pt files.")
@click.pass_context
def import_(ctx: click.Context, array: str, encoder: str | None, dataset: str, split: str | None,
            labels: str | None, index: str | None, text: str | None, prompts: str | None,
            classnames: str | None, class_of_prompt: str | None, key: str) -> None:
    """Bring in features computed elsewhere (.npy, .h5, .pt) so `fit` and `evaluate` use them as if
    extracted: image features of one encoder on one split, or CLIP text embeddings."""
    cfg = _cfg(ctx)
    data = catalog.load_array(Path(array), key).astype(np.float32)
    if text:
        target = _import_text(cfg, data, text, dataset, prompts, classnames, class_of_prompt)
    else:
        if not (encoder and split):
            raise PipelineError("image features need --encoder and --split (or --text for text embeddings)")
        ref = f"{dataset}:{split}"
        target = C.feature_path(cfg, encoder, ref)
        if target.exists():
            raise PipelineError(f"{target.name} already exists: `pipeline cache rm {target.name}` first")
        names = catalog.read_lines(Path(classnames)) if classnames else []
        lab = catalog.load_array(Path(labels)) if labels else None
        idx = catalog.load_array(Path(index)) if index else None
        spec = cfg.encoder(encoder)
        target = catalog.import_features(target, data, lab, idx, {
            "encoder": encoder, "model": spec.model, "pretrained": spec.pretrained, "identity": spec.identity(),
            "dataset": dataset, "split": split, "dataset_identity": cfg.dataset(dataset).identity(),
            "classnames": names, "imported_from": str(array), "preprocess": {}, "versions": {}})
    click.echo(f"imported {data.shape[0]} x {data.shape[1]} -> {target}")


def _import_text(cfg: C.Config, data: np.ndarray, kind: str, dataset: str, prompts: str | None,
                 classnames: str | None, class_of_prompt: str | None) -> Path:
    lines = catalog.read_lines(Path(prompts)) if prompts else [f"prompt {i}" for i in range(len(data))]
    if len(lines) != len(data):
        raise PipelineError(f"{prompts} has {len(lines)} prompts but the array has {len(data)} rows")
    if kind == "classfree":
        target, names, cop = C.classfree_text_path(cfg), [], -np.ones(len(data), np.int64)
    else:
        if not classnames:
            raise PipelineError("class-prompt embeddings need --classnames (one class name a line)")
        names = catalog.read_lines(Path(classnames))
        if class_of_prompt:
            cop = catalog.load_array(Path(class_of_prompt)).astype(np.int64)
        elif len(data) % len(names) == 0:
            cop = np.repeat(np.arange(len(names)), len(data) // len(names))
        else:
            raise PipelineError(f"{len(data)} prompts do not split evenly over {len(names)} classes: "
                                f"give --class-of-prompt")
        target = C.class_text_path(cfg, dataset)
    return store.write_text(target, store.TextEmbeddings(data, lines, cop, names, {
        "dataset": dataset, "prompt_set": kind, "clip": cfg.clip.name, "identity": cfg.clip.identity()}))
