"""`pipeline predict`: top-k classes of new images through an exported model (needs no pipeline.toml)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from zoomshot.cache.errors import PipelineError

from .export_cmd import export_dir, writable_out
from .stage import say


@click.command("predict")
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(),
    help="An export folder (`pipeline export`), or the name of a run exported to its default folder.",
)
@click.option("--classes", help="Class names separated by commas.")
@click.option("--classnames-file", type=click.Path(), help="Class names, one a line.")
@click.option(
    "--templates",
    default="export",
    show_default=True,
    help="'export' (the export's own), 'openai-imagenet', a text file (one {c} template a line) or a "
    "CLIP_benchmark JSON file.",
)
@click.option("--templates-key", help="Entry of a JSON templates file.")
@click.option("--top-k", type=int, help="Classes per image [default: 5, or every class when fewer].")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the predictions: FILE.csv or FILE.jsonl.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--on-bad-image",
    type=click.Choice(["skip", "fail"]),
    default="skip",
    show_default=True,
    help="Unreadable images: report and skip them, or stop.",
)
@click.option("--progress/--no-progress", default=True, help="Progress bar.")
@click.pass_context
def predict(
    ctx: click.Context,
    images: tuple[str, ...],
    model_dir: str,
    classes: str | None,
    classnames_file: str | None,
    templates: str,
    templates_key: str | None,
    top_k: int | None,
    out: str | None,
    batch_size: int,
    device: str,
    on_bad_image: str,
    progress: bool,
) -> None:
    """Top-k classes with probabilities for IMAGES (files or folders) through an exported model.
    Exits 1 when it skipped an unreadable image."""
    from zoomshot.cache.compute import resolve_device
    from zoomshot.export.predict import OUTPUT_SUFFIXES, class_names, image_paths, templates_of, write_predictions
    from zoomshot.export.predict import predict as run_predict

    model_dir = str(_model_folder(ctx, model_dir))
    names = class_names(classes, classnames_file)
    if out is not None:
        if Path(out).suffix not in OUTPUT_SUFFIXES:
            raise PipelineError(f"--out {out}: the name must end in {' or '.join(OUTPUT_SUFFIXES)}")
        writable_out(Path(out))
    prompts = templates_of(templates, Path(model_dir), templates_key)
    result = run_predict(
        Path(model_dir),
        names,
        prompts,
        image_paths(list(images)),
        min(5, len(names)) if top_k is None else top_k,
        batch_size,
        resolve_device(device, "--device"),
        on_bad_image,
        progress,
        say,
    )
    for r in result.rows:
        click.echo(f"{r['image']}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top"]))
    if out is not None:
        click.echo(f"predict: {len(result.rows)} image(s) -> {write_predictions(result.rows, Path(out))}")
    if result.skipped:
        click.echo(f"predict: {len(result.skipped)} unreadable image(s) skipped (see above)")
        sys.exit(1)


def _model_folder(ctx: click.Context, model: str) -> Path:
    """--model as given, or for a run's name (as `pipeline runs` prints it) the folder `pipeline export RUN`
    writes by default; the config is read only then."""
    path = Path(model)
    if path.is_dir() or len(path.parts) != 1 or model.startswith("."):
        return path
    from .config import load

    config = ctx.find_root().params.get("config")
    try:
        cfg = load(Path(config) if config else None)
    except PipelineError:
        return path  # no config to find runs by: --model is a folder that is missing (said later)
    if export_dir(cfg, model).is_dir():
        return export_dir(cfg, model)
    if (cfg.project.path("runs_dir") / model).is_dir():
        raise PipelineError(f"run {model} is not exported yet: run `pipeline export {model}` first, then predict")
    return path
