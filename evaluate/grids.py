"""The hyper-parameter grids the training-free adapters search (`evaluate/adapters.py`), by name: the
names `[evaluate] adapter_grid` and `adapters` take. Plain numbers, no torch, so that the config is
checked without importing the adapters.
"""

from __future__ import annotations

import numpy as np


def _grid(scale: float, steps: int, start: float) -> list[float]:
    """The references' grids: `[i * (scale - start) / steps + start for i in range(steps)]`."""
    return [i * (scale - start) / steps + start for i in range(steps)]


def _geom(lo: float, hi: float, steps: int) -> list[float]:
    return [float(v) for v in np.geomspace(lo, hi, steps)]


#: Search grids per preset and method.
#: `reference`: the references' own lists. TIP-X: SuS-X tipx.py lines 70-75 (alpha 0.1..50 in 20
#: steps, beta 1..50 in 200, gamma 0.1..30 in 50); Tip-Adapter takes the same alpha and beta lists, so
#: that both are compared on equal terms (Tip-Adapter's own per-dataset configs use e.g. beta 0.1..7
#: in 200 steps and alpha 0.1..3 in 20, configs/imagenet.yaml).
#: `wide` (the default): geometric grids that hold the reference ranges and reach a decade or more past
#: them, five values a decade (alpha 0.1..1000, gamma 0.01..1000; beta 0.5..128, two a
#: factor of 2). The reference ranges assume OpenAI CLIP's image-text cosines (a few
#: hundredths between classes); an encoder whose cosines spread further (docs/adapters.md gives the tiny
#: world CLIP's) needs a larger alpha / gamma. A choice on the edge of the grid is reported (`at_grid_edge`).
GRIDS: dict[str, dict[str, dict[str, list[float]]]] = {
    "reference": {
        "tip-adapter": {"alpha": _grid(50, 20, 0.1), "beta": _grid(50, 200, 1.0)},
        "tip-x": {"alpha": _grid(50, 20, 0.1), "beta": _grid(50, 200, 1.0), "gamma": _grid(30, 50, 0.1)},
    },
    "wide": {
        "tip-adapter": {"alpha": _geom(0.1, 1000, 21), "beta": _geom(0.5, 128, 17)},
        "tip-x": {"alpha": _geom(0.1, 1000, 21), "beta": _geom(0.5, 128, 17), "gamma": _geom(0.01, 1000, 26)},
    },
}
DEFAULT_GRIDS = GRIDS["wide"]
#: The adapters, named as `evaluate/adapters.py` defines them (each has a grid in every preset).
ADAPTER_NAMES = tuple(DEFAULT_GRIDS)
