"""`pipeline cache ls | info | verify | rm | import`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from zoomshot.cache import catalog, layout, locks, store
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.settings import Project

from .config import Config
from .stage import StageCommand


def _project(ctx: click.Context) -> Project:
    cfg: Config = ctx.obj
    return cfg.project


def _resolve(project: Project, name: str) -> Path:
    """A cache file given by path or by its name inside the cache."""
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
    facts = catalog.info(_resolve(_project(ctx), name))
    click.echo(json.dumps(facts, indent=1, default=str))
    if facts["problems"]:
        sys.exit(1)


@cache.command(cls=StageCommand)
@click.argument("names", nargs=-1)
@click.pass_context
def verify(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Check completeness, schema, shards, row counts, finiteness and checksums (all files by default)."""
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


# ---------------------------------------------------------------------------------------------- import
def _complete_files(project: Project, folder: str, match: dict) -> list[Path]:
    """Complete files under `<cache_dir>/<folder>` whose attributes equal `match` (None matches anything)."""
    found = []
    for p in catalog.cache_files(project.path("cache_dir")):
        if p.parent.name != folder or p.suffix != ".h5":
            continue
        try:
            attrs = store.read_attrs_complete(p)
        except PipelineError:
            continue
        if all(v is None or attrs.get(k) == v for k, v in match.items()):
            found.append(p)
    return found


def _feature_files(project: Project, dataset: str | None, encoder: str | None, split: str | None = None) -> list[Path]:
    """Complete feature files already in the cache for a dataset, an encoder and/or a split."""
    return _complete_files(project, "features", {"dataset": dataset, "encoder": encoder, "split": split})


def _clip_space_files(project: Project) -> list[Path]:
    """Every cached file whose rows are in CLIP's space: its image features and every text embedding."""
    return _feature_files(project, None, project.clip.name) + _complete_files(
        project, "text", {"clip": project.clip.name}
    )


def _known_classes(project: Project, dataset: str) -> int | None:
    path = layout.class_text_path(project, dataset)
    return len(store.read_text(path).classnames) if path.exists() else None


def _check_width(files: list[Path], width: int, what: str, space: str) -> None:
    for p in files:
        dim = int(store.read_attrs(p)["dim"])
        if dim != width:
            raise PipelineError(
                f"{what} are {width}-wide but {p.name} in the cache holds {dim}-wide {space} features: "
                f"both must come from the same {space} model"
            )


def _check_index_like(files: list[Path], index: np.ndarray) -> None:
    """The same rows as the split's files of other encoders, which they pair with by position."""
    for p in files:
        with store.open_complete(p) as f:
            theirs = f["index"][:]
        if not np.array_equal(theirs, index):
            raise PipelineError(
                f"the index differs from that of {p.name} in the cache ({len(theirs)} rows, "
                f"{theirs[:1].tolist()}..{theirs[-1:].tolist()}): every encoder's file of a split "
                f"must hold the same images in the same order"
            )


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
    project = _project(ctx)
    data = catalog.check_features(catalog.load_array(Path(array), key), f"the array in {array}")
    if text == "classfree":
        target = _import_classfree(project, data, prompts)
    elif text:
        if not dataset:
            raise PipelineError("class-prompt embeddings need --dataset (a [[datasets]] name)")
        target = _import_class_prompts(project, data, dataset, prompts, classnames, class_of_prompt)
    else:
        if not (encoder and split and dataset):
            raise PipelineError("image features need --encoder, --dataset and --split (or --text for text embeddings)")
        target = _import_features(project, data, encoder, dataset, split, labels, index, classnames, array)
    click.echo(f"imported {data.shape[0]} x {data.shape[1]} -> {target}")


def _import_features(
    project: Project,
    data: np.ndarray,
    encoder: str,
    dataset: str,
    split: str,
    labels: str | None,
    index: str | None,
    classnames: str | None,
    source: str,
) -> Path:
    ref = f"{dataset}:{split}"
    target = layout.feature_path(project, encoder, ref)
    if target.exists():
        raise PipelineError(f"{target.name} already exists: `pipeline cache rm {target.name}` first")
    names = catalog.read_lines(Path(classnames)) if classnames else []
    n_classes = len(names) or _known_classes(project, dataset)
    spec = project.encoder(encoder)
    if encoder == project.clip.name:
        _check_width(_clip_space_files(project), data.shape[1], "these CLIP image features", "CLIP")
    else:
        _check_width(_feature_files(project, None, encoder), data.shape[1], f"these {encoder} features", encoder)
    rows = catalog.check_index(catalog.load_array(Path(index)) if index else None, len(data))
    _check_index_like(_feature_files(project, dataset, None, split), rows)
    with locks.holding([target], click.echo):
        return catalog.import_features(
            target,
            data,
            catalog.load_array(Path(labels)) if labels else None,
            rows,
            {
                "encoder": encoder,
                "model": spec.model,
                "pretrained": spec.pretrained,
                "identity": spec.identity(),
                "encoder_key": spec.key(),
                "dataset": dataset,
                "split": split,
                "dataset_identity": project.split_identity(dataset, split),
                "classnames": names,
                "imported_from": Path(source).name,
                "preprocess": {},
                "versions": {},
            },
            num_classes=n_classes,
        )


def _text_attrs(project: Project) -> dict:
    return {
        "clip": project.clip.name,
        "identity": project.clip.identity(),
        "clip_key": project.clip.key(),
        "imported": True,
    }


def _import_class_prompts(
    project: Project,
    data: np.ndarray,
    dataset: str,
    prompts: str | None,
    classnames: str | None,
    class_of_prompt: str | None,
) -> Path:
    if not classnames:
        raise PipelineError("class-prompt embeddings need --classnames (one class name a line)")
    names = catalog.read_lines(Path(classnames))
    lines = _prompt_lines(prompts, len(data))
    if class_of_prompt:
        cop = catalog.check_ints(
            catalog.load_array(Path(class_of_prompt)), len(data), "--class-of-prompt", 0, len(names)
        )
    elif len(data) % len(names) == 0:
        cop = np.repeat(np.arange(len(names)), len(data) // len(names))
    else:
        raise PipelineError(
            f"{len(data)} prompts do not split evenly over {len(names)} classes: give --class-of-prompt"
        )
    if len(np.unique(cop)) != len(names):
        raise PipelineError(f"classes without any prompt: {sorted(set(range(len(names))) - set(cop.tolist()))[:5]}")
    _check_width(_clip_space_files(project), data.shape[1], "these class-prompt embeddings", "CLIP")
    for p in _feature_files(project, dataset, None):
        top = int(store.read_features(p).labels.max(initial=-1))
        if top >= len(names):
            raise PipelineError(
                f"{p.name} in the cache has labels up to {top}, but --classnames lists {len(names)} classes"
            )
    target = layout.class_text_path(project, dataset)
    return store.write_text(
        target,
        store.TextEmbeddings(
            data, lines, cop, names, {"dataset": dataset, "prompt_set": "class-prompts", **_text_attrs(project)}
        ),
    )


def _prompt_lines(prompts: str | None, count: int) -> list[str]:
    lines = layout.read_prompt_file(prompts) if prompts else [f"prompt {i}" for i in range(count)]
    if len(lines) != count:
        raise PipelineError(f"{prompts} has {len(lines)} prompts but the array has {count} rows")
    return lines


def _import_classfree(project: Project, data: np.ndarray, prompts: str | None) -> Path:
    """Keyed by the prompts themselves: `fit` finds them only when [clip] classfree_prompts holds the same."""
    lines = _prompt_lines(prompts or project.clip.classfree_prompts, len(data))
    _check_width(_clip_space_files(project), data.shape[1], "these class-free prompt embeddings", "CLIP")
    target = layout.classfree_text_path(project, prompts=lines)
    if lines != layout.classfree_prompts(project):
        click.echo(
            f"note: these prompts differ from [clip] classfree_prompts ({project.clip.classfree_prompts}); "
            f"`pipeline fit` uses them only with a config whose classfree_prompts file holds them"
        )
    return store.write_text(
        target,
        store.TextEmbeddings(
            data, lines, -np.ones(len(data), np.int64), [], {"prompt_set": "classfree", **_text_attrs(project)}
        ),
    )
