"""The variance-aligned spaces every fitting method works in: the scalar that takes a feature space into
its space (`variance_scale`) and the data-free inverse of an affine map between them (`affine_pinv`).

Every method (Zoom-shot, the Linear Aligner, the closed-form baselines) fits its weights in variance-aligned
spaces, where each space has been multiplied by one scalar (DESIGN.md section 5). The maps themselves are
`zoomshot.cache.runs.Maps`, the run folder's contract, so that saving, loading and applying a map never
needs to know which method produced it.
"""

from __future__ import annotations

import math

import torch

ROWS_PER_CHUNK = 65536  # rows per float64 chunk in whole-cache statistics: bounded memory for any cache size


def variance_scale(x: torch.Tensor, target: float = 4.5) -> float:
    """Scalar c such that the variance over all entries of c*x equals `target`.

    "Variance over all entries" follows Text-to-Concept's `LinearRegressionSolver.get_variance`
    (k1rezaei/Text-to-concept, LinearAligner.py): `np.mean(y**2) - np.mean(y)**2` over the whole (N, D)
    array, i.e. the population variance (ddof=0) around the single global mean, not the mean of per-dimension
    variances. Their scale is then `c = (target / var) ** 0.5`. We compute the same quantity in float64 with two
    passes over row chunks (mean, then squared deviations), so it is exact for large caches and needs no
    float64 copy of the whole matrix.
    """
    if x.numel() == 0:
        raise ValueError("cannot variance-scale an empty feature matrix")
    rows = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(-1, 1)
    chunks = rows.split(ROWS_PER_CHUNK)
    mean = sum(chunk.double().sum() for chunk in chunks) / rows.numel()
    var = sum(((chunk.double() - mean) ** 2).sum() for chunk in chunks) / rows.numel()
    if not math.isfinite(float(var)) or float(var) <= 0.0:
        raise ValueError(f"features have variance {float(var)}; cannot scale them to variance {target}")
    return math.sqrt(target / float(var))


def affine_pinv(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of x -> pinv(W) (x - b), the affine pseudo-inverse of x -> W x + b.

    Used as h_inv where a method trains no inverse (the Linear Aligner; Zoom-shot with the cycle terms off):
    it is data-free, exact when W is square and invertible, and otherwise returns the minimum-norm preimage,
    so `to_source(to_clip(s))` is the projection of s onto what h keeps. Computed in float64.
    """
    w_inv = torch.linalg.pinv(weight.double())
    return w_inv.to(weight.dtype), (-w_inv @ bias.double()).to(bias.dtype)
