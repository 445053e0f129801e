"""The fitted pair of affine maps h: source -> CLIP and h_inv: CLIP -> source, with their variance scales.

Every method (Zoom-shot, the Linear Aligner, the closed-form baselines) fits its weights in variance-aligned
spaces, where each space has been multiplied by one scalar (DESIGN.md section 5). A `LinearMaps` keeps the
weights in those spaces together with the two scalars, so that saving, loading and applying a map never
needs to know which method produced it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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


@dataclass
class LinearMaps:
    """h and h_inv as weights in the variance-aligned spaces plus the two scalars that lead into them.

    h_weight (d, m), h_bias (d,), hinv_weight (m, d), hinv_bias (m,). In raw feature units
    h(s) = ((s * scale_source) @ h_weight.T + h_bias) / scale_clip, and h_inv likewise the other way.
    """

    h_weight: torch.Tensor
    h_bias: torch.Tensor
    hinv_weight: torch.Tensor
    hinv_bias: torch.Tensor
    scale_source: float
    scale_clip: float

    def __post_init__(self) -> None:
        d, m = self.h_weight.shape
        shapes = {"h_bias": (d,), "hinv_weight": (m, d), "hinv_bias": (m,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        self.scale_source = float(self.scale_source)
        self.scale_clip = float(self.scale_clip)

    def to_clip(self, s_raw: torch.Tensor) -> torch.Tensor:
        """Map raw source features (..., m) to raw-unit CLIP features (..., d), on the weights' device."""
        x = s_raw.to(self.h_weight) * self.scale_source
        return (x @ self.h_weight.T + self.h_bias) / self.scale_clip

    def to_source(self, t_raw: torch.Tensor) -> torch.Tensor:
        """Map raw CLIP features (..., d) to raw-unit source features (..., m), on the weights' device."""
        x = t_raw.to(self.hinv_weight) * self.scale_clip
        return (x @ self.hinv_weight.T + self.hinv_bias) / self.scale_source

    def to(self, device: str | torch.device) -> LinearMaps:
        """A copy whose weights live on `device` (where `to_clip` / `to_source` then compute)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in moved.items() if isinstance(v, torch.Tensor)})

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write a safetensors file; scales are stored as float64 scalars so a reload is bit-exact."""
        tensors = {
            "h.weight": self.h_weight,
            "h.bias": self.h_bias,
            "h_inv.weight": self.hinv_weight,
            "h_inv.bias": self.hinv_bias,
            "scale_source": torch.tensor(self.scale_source, dtype=torch.float64),
            "scale_clip": torch.tensor(self.scale_clip, dtype=torch.float64),
        }
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> LinearMaps:
        """Read a file written by `save` onto the CPU (metadata: `safetensors.safe_open(path, "pt").metadata()`)."""
        with safe_open(str(path), framework="pt", device="cpu") as f:
            get = f.get_tensor
            return cls(
                h_weight=get("h.weight"),
                h_bias=get("h.bias"),
                hinv_weight=get("h_inv.weight"),
                hinv_bias=get("h_inv.bias"),
                scale_source=get("scale_source").item(),
                scale_clip=get("scale_clip").item(),
            )
