"""`pipeline list [WHAT]`: the registries the config can name, the way timm's `list_models` lists
models. Needs no config file."""
from __future__ import annotations

from dataclasses import fields

import click

WHAT = ("datasets", "encoders", "variants", "presets", "methods", "adapters", "metrics")


def _options(cls: type, skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{f.name}={f.default!r}" for f in fields(cls) if f.init and f.name not in skip) or "-"


def registries() -> dict[str, list[tuple[str, str]]]:
    """Each registry as (name, what it takes) rows."""
    from zoomshot.evaluate.adapters import ADAPTERS
    from zoomshot.evaluate.report import METRICS
    from zoomshot.evaluate.retrieval import METRICS as RETRIEVAL
    from zoomshot.extract.encoders import FAMILIES
    from zoomshot.extract.settings import DATASET_KINDS
    from zoomshot.fit.methods import METHODS, SUPPLIED
    from zoomshot.fit.presets import DEFAULT_PRESET, PRESETS
    from zoomshot.fit.sweep import BUILTIN_VARIANTS

    return {
        "datasets": [(kind, f"options: {_options(cls)}") for kind, cls in DATASET_KINDS.items()],
        "encoders": [(family, "[clip] model (open_clip)" if family == "open_clip" else "[[encoders]] model (timm)")
                     for family in FAMILIES],
        "variants": [(name, ", ".join(f"{k}={v!r}" for k, v in spec.items())
                      + (f"; presets: {', '.join(PRESETS)}" if METHODS[spec["method"]].presets else ""))
                     for name, spec in BUILTIN_VARIANTS.items()],
        "presets": [(name, ", ".join(f"{k}={v!r}" for k, v in spec.items()) or
                     f"the trainer's defaults{' (default)' if name == DEFAULT_PRESET else ''}")
                    for name, spec in PRESETS.items()],
        "methods": [(name, f"revision {m.revision}; settings: {_options(m.settings, SUPPLIED)}")
                    for name, m in METHODS.items()],
        "adapters": [(name, f"searches {', '.join(a.searched)}") for name, a in ADAPTERS.items()],
        "metrics": [(name, "[evaluate] retrieval = true" if name in RETRIEVAL else "") for name in METRICS],
    }


@click.command("list")
@click.argument("what", required=False, type=click.Choice(WHAT))
def list_registries(what: str | None) -> None:
    """List dataset kinds, encoder families, fit variants, presets and methods, adapters and metrics."""
    for name, rows in registries().items():
        if what not in (None, name):
            continue
        click.echo(f"{name}:")
        width = max(len(r[0]) for r in rows)
        for key, text in rows:
            click.echo(f"  {key:<{width}}  {text}".rstrip())
