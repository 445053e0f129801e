"""`pipeline list [WHAT]`: the registries the config can name, the way timm's `list_models` lists
models. Needs no config file; each registry imports only what it lists (methods and variants read the
fitting methods, which need torch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

import click

Rows = list[tuple[str, str]]


def _options(cls: type, skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{f.name}={f.default!r}" for f in fields(cls) if f.init and f.name not in skip) or "-"


def _datasets() -> Rows:
    from zoomshot.extract.settings import DATASET_KINDS

    return [(kind, f"options: {_options(cls)}") for kind, cls in DATASET_KINDS.items()]


def _encoders() -> Rows:
    from zoomshot.cache.settings import ClipCfg, EncoderCfg

    return [(ClipCfg.family_name, "[clip] model (open_clip)"), (EncoderCfg.family_name, "[[encoders]] model (timm)")]


def _variants() -> Rows:
    from zoomshot.fit.method_settings import BUILTIN_VARIANTS
    from zoomshot.fit.methods import METHODS
    from zoomshot.fit.presets import PRESETS

    return [
        (
            name,
            ", ".join(f"{k}={v!r}" for k, v in spec.items())
            + (f"; presets: {', '.join(PRESETS)}" if METHODS[spec["method"]].presets else ""),
        )
        for name, spec in BUILTIN_VARIANTS.items()
    ]


def _presets() -> Rows:
    from zoomshot.fit.presets import DEFAULT_PRESET, PRESETS

    return [
        (
            name,
            ", ".join(f"{k}={v!r}" for k, v in spec.items())
            or f"the trainer's defaults{' (default)' if name == DEFAULT_PRESET else ''}",
        )
        for name, spec in PRESETS.items()
    ]


def _methods() -> Rows:
    from zoomshot.fit.methods import METHODS, SUPPLIED

    return [(name, f"revision {m.revision}; settings: {_options(m.settings, SUPPLIED)}") for name, m in METHODS.items()]


def _adapters() -> Rows:
    from zoomshot.evaluate.grids import DEFAULT_GRIDS

    return [(name, f"searches {', '.join(grid)}") for name, grid in DEFAULT_GRIDS.items()]


def _metrics() -> Rows:
    from zoomshot.evaluate.report import METRICS, RETRIEVAL

    return [(name, "[evaluate] retrieval = true" if name in RETRIEVAL else "") for name in METRICS]


#: Each registry and how to list it as (name, what it takes) rows.
REGISTRIES: dict[str, Callable[[], Rows]] = {
    "datasets": _datasets,
    "encoders": _encoders,
    "variants": _variants,
    "presets": _presets,
    "methods": _methods,
    "adapters": _adapters,
    "metrics": _metrics,
}


@click.command("list")
@click.argument("what", required=False, type=click.Choice(list(REGISTRIES)))
def list_registries(what: str | None) -> None:
    """List dataset kinds, encoder families, fit variants, presets and methods, adapters and metrics."""
    for name, listing in REGISTRIES.items():
        if what not in (None, name):
            continue
        rows = listing()
        click.echo(f"{name}:")
        width = max(len(r[0]) for r in rows)
        for key, text in rows:
            click.echo(f"  {key:<{width}}  {text}".rstrip())
