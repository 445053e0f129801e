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
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, NamedTuple

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.settings import build

from .method_settings import (
    REVISION,
    REVISIONS,
    LinearAlignerSettings,
    LstsqSettings,
    ProcrustesSettings,
    TrainConfig,
)
from .presets import DEFAULT_PRESET, PRESETS

if TYPE_CHECKING:
    from torch import Tensor

    from zoomshot.cache.runs import Maps

Result = tuple["Maps", list[dict]]
Fit = Callable[["Tensor", "Tensor", "Tensor | None", dict, int, str], Result]

# Arguments that fit_method supplies itself (from the grid and the [fit] table); they are not method keys.
SUPPLIED = ("seed", "device")


class Method(NamedTuple):
    settings: type
    fit: Fit
    revision: int
    by_epochs: bool = False
    needs_prompts: Callable[[dict], bool] = lambda params: False
    presets: dict[str, dict] = {}


# Each fit imports its code when it runs, so that listing and checking methods needs no torch.


def _zoomshot(s: Tensor, t: Tensor, u: Tensor | None, params: dict, seed: int, device: str) -> Result:
    from .trainer import train_maps

    return train_maps(s, t, u, TrainConfig(**params, seed=seed, device=device))


def _linear_aligner(s: Tensor, t: Tensor, u: Tensor | None, params: dict, seed: int, device: str) -> Result:
    from .baselines import linear_aligner_maps

    return linear_aligner_maps(s, t, **params, seed=seed, device=device)


def _closed_form(name: str) -> Fit:
    """The closed-form baseline `fit/baselines.py:<name>` as a Fit: computed on `device`, no prompt set, no
    seed, no per-epoch history."""

    def fit(s: Tensor, t: Tensor, u: Tensor | None, params: dict, seed: int, device: str) -> Result:
        from . import baselines

        return getattr(baselines, name)(s.to(device), t.to(device), **params), []

    return fit


METHODS: dict[str, Method] = {
    "zoomshot": Method(
        TrainConfig,
        _zoomshot,
        REVISION,
        by_epochs=True,
        needs_prompts=lambda params: bool(params["w_kd"] or params["w_cyc_text"]),
        presets=PRESETS,
    ),
    "linear-aligner": Method(LinearAlignerSettings, _linear_aligner, REVISIONS["linear-aligner"]),
    "lstsq": Method(LstsqSettings, _closed_form("lstsq_maps"), REVISIONS["lstsq"]),
    "procrustes": Method(ProcrustesSettings, _closed_form("procrustes_maps"), REVISIONS["procrustes"]),
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
    import torch

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
