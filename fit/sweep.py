"""A grid in pipeline.toml expands to named runs, executed in parallel on dask.

Expansion resolves every run's settings completely (each method default filled in) and checks them,
so a bad key or value in `[fit.definitions.NAME]` or `[fit] trainer` is a config error before any
run starts. Tasks receive plain dicts of paths and settings, never open HDF5 handles, so the same code
runs on the threaded scheduler and on a `dask.distributed` cluster.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from zoomshot.cache import layout
from zoomshot.cache.compute import resolve_device
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.runs import run_name
from zoomshot.cache.settings import IMPORTED, Project, parse_ref

from .method_settings import BUILTIN_VARIANTS
from .methods import method, resolve_params
from .presets import DEFAULT_PRESET, PRESETS, variant_label
from .runs import execute
from .settings import FitCfg


def variant(fit: FitCfg, name: str) -> tuple[str, dict, str]:
    """(method, its settings from the variant's table, where that table is) of a variant name."""
    if name in fit.definitions:
        spec, where = fit.definitions[name], f"fit.definitions.{name}"
    elif name in BUILTIN_VARIANTS:
        spec, where = BUILTIN_VARIANTS[name], f"variant {name}"
    else:
        raise PipelineError(
            f"unknown fit variant {name!r}: define [fit.definitions.{name}] "
            f"or use one of {', '.join({**BUILTIN_VARIANTS, **fit.definitions})}"
        )
    if not isinstance(spec, dict) or "method" not in spec:
        raise PipelineError(f"[{where}] must be a table with a `method` key")
    spec = dict(spec)
    return spec.pop("method"), spec, where


def _check_presets(project: Project, fit: FitCfg) -> None:
    """Every preset of the grid and of `preset_encoders` is known, and so is every encoder named there."""
    if "preset" in fit.trainer:
        raise PipelineError(
            "config key 'fit.trainer.preset': choose presets with [fit] presets (or a variant's "
            "own `preset`), not in the trainer table"
        )
    for preset in [*fit.presets, *fit.preset_encoders]:
        if preset not in PRESETS:
            raise PipelineError(f"config key 'fit.presets': unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    for preset, names in fit.preset_encoders.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PipelineError(f"config key 'fit.preset_encoders.{preset}' must be a list of encoder names")
        for name in names:
            project.encoder(name)


def _runs_on(fit: FitCfg, preset: str, encoder: str) -> bool:
    return encoder in fit.preset_encoders.get(preset, [encoder])


def expand(project: Project, fit: FitCfg) -> list[dict]:
    """Every run of the grid with its resolved settings, deduplicated by name (baselines ignore the
    epochs and presets axes; a Zoom-shot variant runs once per preset of `[fit] presets`, on the encoders
    `preset_encoders` allows it, unless its own table names a preset)."""
    encoders = fit.encoders or [e.name for e in project.encoders]
    if not encoders:
        raise PipelineError("no encoder to fit: add [[encoders]] tables to the config")
    for enc in encoders:
        project.encoder(enc)
    _check_presets(project, fit)
    trainer = resolve_params("zoomshot", fit.trainer, "fit.trainer") if fit.trainer else {}
    trainer = {k: v for k, v in trainer.items() if k in fit.trainer}
    clip = project.clip
    specs: dict[str, dict] = {}
    grid = itertools.product(fit.variants, fit.presets, fit.train, fit.fractions, fit.epochs, encoders, fit.seeds)
    for vname, preset, train, fraction, epochs, enc, seed in grid:
        method_name, raw, where = variant(fit, vname)
        by_epochs, has_presets = method(method_name).by_epochs, bool(method(method_name).presets)
        preset = raw.get("preset", preset) if has_presets else DEFAULT_PRESET
        if not _runs_on(fit, preset, enc):
            continue
        given = {"preset": preset, **trainer, **raw, "epochs": epochs} if by_epochs else raw
        params = resolve_params(method_name, given, where)
        label = variant_label(vname, preset)
        refs = train.split("+")
        pairs = [
            {
                "ref": r,
                "source": layout.feature_path(project, enc, r),
                "clip": layout.feature_path(project, clip.name, r),
            }
            for r in refs
        ]
        classfree = layout.classfree_text_path(project) if method(method_name).needs_prompts(params) else None
        identity = {
            "variant": label,
            "encoder": enc,
            "method": method_name,
            "params": params,
            "fraction": fraction,
            "seed": seed,
            "train": [{"ref": p["ref"], "source": p["source"].name, "clip": p["clip"].name} for p in pairs],
            "classfree": classfree.name if classfree else None,
            "threads": fit.threads,
        }  # a reduction's last bits follow the thread count
        name = run_name(identity)
        record = {
            "name": name,
            "variant": label,
            "method": method_name,
            "revision": method(method_name).revision,
            "preset": preset if has_presets else None,
            "params": params,
            "encoder": enc,
            "encoder_key": project.encoder(enc).key(),
            "encoder_identity": project.encoder(enc).identity(),
            "encoder_pretrained": project.encoder(enc).pretrained,
            "clip": clip.name,
            "clip_key": clip.key(),
            "clip_identity": clip.identity(),
            "train": refs,
            "fraction": fraction,
            "epochs": epochs if by_epochs else None,
            "seed": seed,
            "identity": identity,
        }
        specs.setdefault(
            name,
            {
                "name": name,
                "record": record,
                "device": fit.device,
                "threads": fit.threads,
                "run_dir": str(project.path("runs_dir") / name),
                "pairs": [{"source": str(p["source"]), "clip": str(p["clip"])} for p in pairs],
                "classfree": str(classfree) if classfree else "",
                "imported": {
                    "encoder": project.encoder(enc).model == IMPORTED,
                    "clip": clip.model == IMPORTED,
                    "datasets": [project.dataset(parse_ref(r)[0]).kind == IMPORTED for r in refs],
                },
            },
        )
    return list(specs.values())


def check_inputs(specs: list[dict], scheduler: str = "") -> None:
    """Fail fast, in one line, when the cache lacks an input of the sweep, saying how to make it (or,
    running here, when the device is not)."""
    if not scheduler:
        for device in {s["device"] for s in specs}:
            resolve_device(device, "fit.device")
    for s in specs:
        for pair, imported in zip(s["pairs"], s["imported"]["datasets"]):
            for role, path in pair.items():
                if not Path(path).exists():
                    by_import = imported or s["imported"]["encoder" if role == "source" else "clip"]
                    how = (
                        "import it with `pipeline cache import`"
                        if by_import
                        else "run `pipeline extract` first (with the same config)"
                    )
                    raise PipelineError(
                        f"cache file {Path(path).name} is missing (training features of "
                        f"{s['record']['encoder'] if role == 'source' else 'CLIP'} for run "
                        f"{s['name']}, variant {s['record']['variant']}): {how}"
                    )
        if s["classfree"] and not Path(s["classfree"]).exists():
            how = (
                "import them: `pipeline cache import ARRAY --text classfree --prompts FILE` with the prompts "
                "of [clip] classfree_prompts"
                if s["imported"]["clip"]
                else "run `pipeline extract` first (with the same config)"
            )
            raise PipelineError(
                f"the class-free prompt embeddings ({Path(s['classfree']).name}) that variant "
                f"{s['record']['variant']} needs are missing: {how}"
            )


def run_sweep(
    specs: list[dict], scheduler: str = "", workers: int = 2, on_result: Callable[[dict], None] | None = None
) -> list[dict]:
    """Execute runs on dask: threads here, or the `dask.distributed` cluster at `scheduler`."""
    if not specs:
        return []
    if scheduler:
        from dask.distributed import as_completed

        from zoomshot.cache.compute import client

        with client(scheduler) as c:
            results = []
            for fut in as_completed(c.map(execute, specs, pure=False)):
                results.append(fut.result())
                if on_result:
                    on_result(results[-1])
        return results
    import dask
    from dask.callbacks import Callback

    tasks = [dask.delayed(execute, pure=False)(s) for s in specs]

    class _Report(Callback):
        def _posttask(self, key, result, dsk, state, id):
            if on_result and isinstance(result, dict) and "status" in result:
                on_result(result)

    with _Report():
        return list(dask.compute(*tasks, scheduler="threads", num_workers=workers))
