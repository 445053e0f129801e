"""Evaluate with LAION's CLIP_benchmark: `pipeline export-wds` writes a cached split in its local
webdataset layout, `pipeline clip-benchmark ARGS` runs its command line with the `zoomshot` model type."""

from __future__ import annotations

from pathlib import Path

import click

from zoomshot.cache.settings import parse_ref

from .config import Config
from .export_cmd import writable_out
from .stage import StageCommand


@click.command("export-wds", cls=StageCommand)
@click.argument("split_ref", metavar="DATASET:SPLIT")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Dataset root for CLIP_benchmark's --dataset_root [default: wds/DATASET beside runs_dir].",
)
@click.option("--shard-size", type=click.IntRange(min=1), default=10_000, show_default=True, help="Images per tar.")
@click.option(
    "--image-format",
    type=click.Choice(["png", "webp"]),
    default="png",
    show_default=True,
    help="Lossless image encoding.",
)
@click.option("--progress/--no-progress", default=True, help="Progress bar.")
@click.pass_context
def export_wds(
    ctx: click.Context, split_ref: str, out: str | None, shard_size: int, image_format: str, progress: bool
) -> None:
    """Write the cached rows of DATASET:SPLIT (its images, labels, class names and templates) in
    CLIP_benchmark's webdataset layout: `--dataset wds/DATASET --dataset_root OUT`."""
    from zoomshot.export.wds import write_wds

    cfg: Config = ctx.obj
    dataset, split = parse_ref(split_ref)
    target = Path(out) if out else cfg.project.path("runs_dir").parent / "wds" / dataset
    n = write_wds(cfg.project, split_ref, writable_out(target), shard_size, image_format, progress)
    click.echo(
        f"export-wds: {n} images of {split_ref} -> {target} (CLIP_benchmark: --dataset wds/{target.name} "
        f"--dataset_root {target} --split {split})"
    )


@click.command("clip-benchmark", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def clip_benchmark(args: tuple[str, ...]) -> None:
    """CLIP_benchmark's command line with the `zoomshot` model type, e.g. `pipeline clip-benchmark eval
    --model_type zoomshot --pretrained EXPORT_DIR --model NAME --dataset wds/shapes --dataset_root DIR`."""
    from zoomshot.export.benchmark import main

    main(list(args))
