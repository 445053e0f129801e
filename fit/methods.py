"""One entry point for every fitting method, so sweeps and the CLI name a method and pass its settings.

Each method is a registry entry: `settings` is a dataclass whose fields are the method's config keys
(checked by the same builder as pipeline.toml, so a bad key or value is one line naming it, found
when the sweep is expanded), `fit` runs it, `revision` numbers its maths (recorded in every run.json; a
finished run of another revision is fitted again, so a changed method never reuses it), `by_epochs`
says whether the grid's epochs apply, `needs_prompts` whether its settings read the class-free prompt
embeddings, and `presets` the named recipes its `preset` setting chooses from (fit/presets.py).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import asdict, field, make_dataclass
from typing import Any, NamedTuple

import torch

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.runs import Maps
from zoomshot.cache.settings import Check, at_least, build

from .baselines import REVISIONS, linear_aligner_maps, lstsq_maps, procrustes_maps
from .presets import DEFAULT_PRESET, PRESETS
from .trainer import REVISION, TrainConfig, train_maps

Result = tuple[Maps, list[dict]]
Fit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, dict, int, str], Result]
Tensor = torch.Tensor

# Arguments that fit_method supplies itself (from the grid and the [fit] table); they are not method keys.
SUPPLIED = ("s", "t", "u", "seed", "device")


class Method(NamedTuple):
    settings: type
    fit: Fit
    revision: int
    by_epochs: bool = False
    needs_prompts: Callable[[dict], bool] = lambda params: False
    presets: dict[str, dict] = {}


def _settings_of(fn: Callable[..., Any], checks: dict[str, Check]) -> type:
    """A settings dataclass from a function's keyword arguments and their defaults."""
    params = inspect.signature(fn).parameters.values()
    return make_dataclass(
        f"{fn.__name__}_settings",
        [
            (
                p.name,
                type(p.default),
                field(default=p.default, metadata={"checks": (checks[p.name],)} if p.name in checks else {}),
            )
            for p in params
            if p.name not in SUPPLIED and p.default is not inspect.Parameter.empty
        ],
    )


def _zoomshot(s: Tensor, t: Tensor, u: Tensor | None, params: dict, seed: int, device: str) -> Result:
    return train_maps(s, t, u, TrainConfig(**params, seed=seed, device=device))


def _linear_aligner(s: Tensor, t: Tensor, u: Tensor | None, params: dict, seed: int, device: str) -> Result:
    return linear_aligner_maps(s, t, **params, seed=seed, device=device)


def _closed_form(fn: Callable[..., Maps]) -> Fit:
    """A closed-form baseline as a Fit: computed on `device`, no prompt set, no seed, no per-epoch history."""
    return lambda s, t, u, params, seed, device: (fn(s.to(device), t.to(device), **params), [])


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


METHODS: dict[str, Method] = {
    "zoomshot": Method(
        TrainConfig,
        _zoomshot,
        REVISION,
        by_epochs=True,
        needs_prompts=lambda params: bool(params["w_kd"] or params["w_cyc_text"]),
        presets=PRESETS,
    ),
    "linear-aligner": Method(
        _settings_of(
            linear_aligner_maps,
            {
                "epochs": at_least(1),
                "batch_size": at_least(1),
                "lr": _positive,
                "t_max": at_least(1),
                "weight_decay": at_least(0),
                "target_variance": _positive,
            },
        ),
        _linear_aligner,
        REVISIONS["linear-aligner"],
    ),
    "lstsq": Method(
        _settings_of(lstsq_maps, {"ridge": at_least(0), "target_variance": _positive}),
        _closed_form(lstsq_maps),
        REVISIONS["lstsq"],
    ),
    "procrustes": Method(
        _settings_of(procrustes_maps, {"target_variance": _positive}),
        _closed_form(procrustes_maps),
        REVISIONS["procrustes"],
    ),
}


def method(name: str) -> Method:
    if name not in METHODS:
        raise PipelineError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def resolve_params(name: str, params: dict, where: str = "") -> dict:
    """The method's full settings: `params` over its preset's values (`params["preset"]`, default
    `tuned`) over its defaults, every key known, typed and in range; PipelineError names the bad key (as
    `where.key`) and the closest valid one."""
    settings, presets = method(name).settings, method(name).presets
    supplied = [k for k in params if k in SUPPLIED]
    if supplied:
        raise PipelineError(
            f"'{supplied[0]}' is set by the sweep ([fit] seeds / device), not per variant: "
            f"remove it{f' from [{where}]' if where else ''}"
        )
    if presets:
        preset = params.get("preset", DEFAULT_PRESET)
        if preset not in presets:
            raise PipelineError(
                f"{f'config table {where!r}: ' if where else ''}unknown preset {preset!r}; "
                f"valid presets: {', '.join(presets)}"
            )
        params = {**presets[preset], **params}
    try:
        resolved = asdict(build(settings, params, where))
    except (ValueError, TypeError) as e:  # a settings class's own checks (TrainConfig.__post_init__)
        raise PipelineError(f"config table '{where}': {e}" if where else str(e)) from None
    return {k: v for k, v in resolved.items() if k not in SUPPLIED}


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """`threads` intra-op threads for torch in the calling thread, restored after.

    torch keeps this count per thread (OpenMP's and MKL's settings are per thread; a thread takes the
    process-wide value only on its first parallel op), and the count moves the last bits of every
    reduction, which a fit's cycle and KD terms amplify to whole points of top-1. So each fit sets it in
    the thread that runs it: what a fit computes never depends on which thread of a pool runs it, what
    that thread ran before, the machine's cores or its load.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_method(
    name: str, s: Tensor, t: Tensor, u: Tensor | None, params: dict, seed: int, device: str, threads: int = 1
) -> Result:
    """Fit method `name` on row-aligned s (N, m), t (N, d) and prompt set u (K, d) or None, on `threads`
    intra-op CPU threads (`torch_threads`; the same maps for the same settings, bit for bit).

    Returns the maps and the per-epoch loss records (empty for closed-form methods).
    """
    with torch_threads(threads):
        return method(name).fit(s, t, u, resolve_params(name, params), seed, device)
