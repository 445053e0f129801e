"""A grid in pipeline.toml expands to named runs, executed in parallel on dask.

Tasks receive plain dicts of paths and settings, never open HDF5 handles, so the same code runs on
the threaded scheduler and on a `dask.distributed` cluster.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

from zoomshot.cache.errors import PipelineError
from zoomshot.cli import config as C

from .runs import execute, run_name

# Named variants that need no table in the config; `[fit.definitions.NAME]` adds or overrides.
BUILTIN_VARIANTS: dict[str, dict] = {
    "mse": {"method": "zoomshot", "w_mse": 1.0, "w_cyc": 0.0, "w_cyc_text": 0.0, "w_kd": 0.0},
    "mse+cyc": {"method": "zoomshot", "w_mse": 1.0, "w_cyc": 1.0, "w_cyc_text": 1.0, "w_kd": 0.0},
    "mse+cyc+kd-lm": {"method": "zoomshot", "w_mse": 1.0, "w_cyc": 1.0, "w_cyc_text": 1.0, "w_kd": 1.0,
                      "kd_variant": "lm"},
    "mse+cyc+kd-htce": {"method": "zoomshot", "w_mse": 1.0, "w_cyc": 1.0, "w_cyc_text": 1.0, "w_kd": 1.0,
                        "kd_variant": "ht-ce"},
    "linear-aligner": {"method": "linear-aligner"},
    "linear-aligner-fixed": {"method": "linear-aligner", "fixed": True},
    "lstsq": {"method": "lstsq"},
    "procrustes": {"method": "procrustes"},
}
TRAINED_METHODS = {"zoomshot"}          # methods whose epochs come from the grid
TEXT_METHODS = {"zoomshot"}             # methods that read the class-free prompt embeddings


def variant(cfg: C.Config, name: str) -> dict:
    table = {**BUILTIN_VARIANTS, **cfg.fit.definitions}
    if name not in table:
        raise PipelineError(f"unknown fit variant {name!r}: define [fit.definitions.{name}] "
                            f"or use one of {', '.join(table)}")
    spec = dict(table[name])
    if "method" not in spec:
        raise PipelineError(f"[fit.definitions.{name}] needs a `method` key")
    return spec


def expand(cfg: C.Config) -> list[dict]:
    """Every run of the grid, deduplicated by name (baselines ignore the epochs axis)."""
    encoders = cfg.fit.encoders or [e.name for e in cfg.encoders]
    if not encoders:
        raise PipelineError("no encoder to fit: add [[encoders]] tables to the config")
    paths = {k: str(cfg.path(k)) for k in ("cache_dir", "runs_dir")}
    specs: dict[str, dict] = {}
    grid = itertools.product(cfg.fit.variants, cfg.fit.train, cfg.fit.fractions, cfg.fit.epochs,
                             encoders, cfg.fit.seeds)
    for vname, train, fraction, epochs, enc, seed in grid:
        v = variant(cfg, vname)
        method = v.pop("method")
        if method in TRAINED_METHODS:
            v = {**cfg.fit.trainer, **v, "epochs": epochs}
        refs = train.split("+")
        spec = {
            "variant": vname, "method": method, "params": v, "encoder": enc,
            "encoder_identity": cfg.encoder(enc).identity(), "clip_identity": cfg.clip.identity(),
            "train": refs, "fraction": fraction, "seed": seed, "device": cfg.fit.device,
            "pairs": [{"source": str(C.feature_path(cfg, enc, r)),
                       "clip": str(C.feature_path(cfg, cfg.clip.name, r))} for r in refs],
            "classfree": str(C.classfree_text_path(cfg)) if method in TEXT_METHODS else "",
            "paths": paths,
        }
        spec["cache_keys"] = [Path(p[k]).name for p in spec["pairs"] for k in ("source", "clip")] + \
            ([Path(spec["classfree"]).name] if spec["classfree"] else [])
        spec["name"] = run_name(spec)
        specs.setdefault(spec["name"], spec)
    return list(specs.values())


def check_inputs(specs: list[dict]) -> None:
    """Fail fast, in one line, when the cache lacks an input of the sweep."""
    needed = {p for s in specs for pair in s["pairs"] for p in pair.values()} | \
        {s["classfree"] for s in specs if s["classfree"]}
    missing = sorted(p for p in needed if not Path(p).exists())
    if missing:
        raise PipelineError(f"{len(missing)} cache file(s) missing, e.g. {missing[0]}: "
                            f"run `pipeline extract` first (with the same config)")


def run_sweep(specs: list[dict], scheduler: str = "", workers: int = 2,
              on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Execute runs on dask: threads here, or the `dask.distributed` cluster at `scheduler`."""
    if not specs:
        return []
    if scheduler:
        from dask.distributed import Client, as_completed
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as e:
            raise PipelineError(f"cannot reach the dask scheduler at {scheduler}: {e}") from None
        with client:
            futures = client.map(execute, specs, pure=False)
            results = []
            for fut in as_completed(futures):
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
