"""One entry point for every fitting method, so sweeps and the CLI name a method and pass its settings.

Each method is a registry entry: `settings` is the callable whose keyword arguments are the method's config
keys (they are validated against its signature, and its defaults resolve a partial config), `fit` runs it.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .baselines import linear_aligner_maps, lstsq_maps, procrustes_maps
from .maps import LinearMaps
from .trainer import TrainConfig, train_maps

Result = tuple[LinearMaps, list[dict]]
Fit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, dict, int, str], Result]

# Arguments that fit_method supplies itself; they are not config keys.
_SUPPLIED = {"s", "t", "u", "seed", "device"}


class Method(NamedTuple):
    settings: Callable[..., Any]
    fit: Fit


Tensor = torch.Tensor


def _zoomshot(s: Tensor, t: Tensor, u: Tensor | None, params: dict, seed: int, device: str) -> Result:
    return train_maps(s, t, u, TrainConfig(**params, seed=seed, device=device))


def _linear_aligner(s: Tensor, t: Tensor, u: Tensor | None, params: dict, seed: int, device: str) -> Result:
    return linear_aligner_maps(s, t, **params, seed=seed, device=device)


def _closed_form(fn: Callable[..., LinearMaps]) -> Fit:
    """A closed-form baseline as a Fit: computed on `device`, no prompt set, no seed, no per-epoch history."""
    return lambda s, t, u, params, seed, device: (fn(s.to(device), t.to(device), **params), [])


METHODS: dict[str, Method] = {
    "zoomshot": Method(TrainConfig, _zoomshot),
    "linear-aligner": Method(linear_aligner_maps, _linear_aligner),
    "lstsq": Method(lstsq_maps, _closed_form(lstsq_maps)),
    "procrustes": Method(procrustes_maps, _closed_form(procrustes_maps)),
}


def _method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def resolve_params(name: str, params: dict) -> dict:
    """The method's full settings, `params` over its defaults; ValueError names an unknown key and the closest one."""
    signature = inspect.signature(_method(name).settings).parameters
    defaults = {key: p.default for key, p in signature.items() if key not in _SUPPLIED}
    for key in params:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            valid = ", ".join(sorted(defaults))
            raise ValueError(f"unknown parameter {key!r} for method {name!r}{hint} (valid: {valid})")
    return {**defaults, **params}


def fit_method(
    name: str, s: torch.Tensor, t: torch.Tensor, u: torch.Tensor | None, params: dict, seed: int, device: str
) -> Result:
    """Fit method `name` on row-aligned s (N, m), t (N, d) and prompt set u (K, d) or None.

    Returns the maps and the per-epoch loss records (empty for closed-form methods).
    """
    return _method(name).fit(s, t, u, resolve_params(name, params), seed, device)
