"""Ridge regularisation of the reconstruction, its strength chosen by generalised cross-validation (GCV).

A map fitted to few rows (a few times the source width) overfits its reconstruction: fitted exactly, it
is no better than a map fitted to noise. A ridge penalty lam ||W||^2 (the bias not penalised) shrinks the
directions the rows barely span. GCV (Golub, Heath & Wahba 1979) estimates the leave-one-out error of
every strength in closed form from one eigendecomposition, so the strength follows the data: strong for
100 rows, negligible for 100,000. Strengths are relative to the mean eigenvalue of the input covariance,
so one grid fits any feature scale. Only the training pairs are used (no label, no test row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spaces import ROWS_PER_CHUNK

#: Relative ridge strengths GCV chooses from: 1e-6 .. 100, four a decade.
GRID = tuple(10.0 ** (e / 4) for e in range(-24, 9))
Affine = tuple[torch.Tensor, torch.Tensor]  # (weight, bias)


@dataclass
class Moments:
    """Means and centered cross-product sums (not divided by N) of row-aligned s and t, in float64."""

    n: int
    mean_s: torch.Tensor
    mean_t: torch.Tensor
    ss: torch.Tensor  # (m, m) = S_c^T S_c
    tt: torch.Tensor  # (d, d) = T_c^T T_c
    ts: torch.Tensor  # (d, m) = T_c^T S_c

    def scaled(self, c_s: float, c_t: float) -> Moments:
        """The moments of (c_s * s, c_t * t), without copying the data."""
        return Moments(
            self.n, self.mean_s * c_s, self.mean_t * c_t, self.ss * c_s**2, self.tt * c_t**2, self.ts * (c_s * c_t)
        )


def moments(s: torch.Tensor, t: torch.Tensor) -> Moments:
    """Two passes over row chunks (means, then centered products) so large float16/32 caches stay exact."""
    pairs = list(zip(s.split(ROWS_PER_CHUNK), t.split(ROWS_PER_CHUNK)))
    mean_s = sum(a.double().sum(0) for a, _ in pairs) / s.shape[0]
    mean_t = sum(b.double().sum(0) for _, b in pairs) / s.shape[0]
    ss = tt = ts = 0.0
    for a, b in pairs:
        a, b = a.double() - mean_s, b.double() - mean_t
        ss, tt, ts = ss + a.T @ a, tt + b.T @ b, ts + b.T @ a
    return Moments(s.shape[0], mean_s, mean_t, ss, tt, ts)


def absolute(ridge: float, xx: torch.Tensor) -> float:
    """lam of a relative strength: ridge times the mean eigenvalue of xx."""
    return float(ridge * torch.trace(xx) / xx.shape[0])


def gcv_ridge(
    xx: torch.Tensor,
    yx: torch.Tensor,
    yy: float,
    n: int,
    grid: tuple[float, ...] = GRID,
    spectrum: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> float:
    """The relative strength (from `grid`) whose ridge fit of Y on X has the least GCV score
    RSS(lam)/n / (1 - df(lam)/n)^2, from centered sums xx = X^T X, yx = Y^T X and yy = ||Y||^2
    (`spectrum`: xx's `torch.linalg.eigh`, when the caller has it).

    df counts the intercept (centering costs a degree of freedom): without it, fewer rows than dimensions
    let the near-interpolating fits score best and the smallest strength always won. Directions below the
    rank (centered X has rank <= n - 1) are left out, so round-off there does not enter RSS.
    """
    eigenvalues, vectors = spectrum if spectrum is not None else torch.linalg.eigh(xx)
    rank = int((eigenvalues > eigenvalues.max() * xx.shape[0] * torch.finfo(xx.dtype).eps).sum())
    top = torch.argsort(eigenvalues, descending=True)[: min(rank, n - 1)]
    eigenvalues, vectors = eigenvalues[top], vectors[:, top]
    explained = (vectors.T @ yx.T).pow(2).sum(dim=1) / eigenvalues  # ||Y along each principal direction||^2
    unexplained = max(yy - float(explained.sum()), 0.0)
    scores = []
    for ridge in grid:
        lam = absolute(ridge, xx)
        shrunk = lam / (eigenvalues + lam)  # 1 - the share of each direction the fit keeps
        rss = unexplained + float((shrunk**2 * explained).sum())
        df = 1 + float((1 - shrunk).sum())
        scores.append(rss / n / (1 - df / n) ** 2 if df < n else float("inf"))
    return grid[min(range(len(grid)), key=scores.__getitem__)]


def ridge_fit(xx: torch.Tensor, yx: torch.Tensor, mean_x: torch.Tensor, mean_y: torch.Tensor, ridge: float) -> Affine:
    """W, b minimising ||Y - X W^T - b||^2 + lam ||W||^2 from centered sums; the bias is not penalised.

    Centering is the exact solution of the ones-column augmentation with an unpenalised bias column;
    lam = `absolute(ridge, xx)`.
    """
    eye = torch.eye(xx.shape[0], dtype=xx.dtype, device=xx.device)
    weight = torch.linalg.solve(xx + absolute(ridge, xx) * eye, yx.T).T
    return weight, mean_y - weight @ mean_x
