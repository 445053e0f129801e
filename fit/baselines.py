"""Baseline maps fitted on the same cache as Zoom-shot (DESIGN.md section 5): closed-form ridge least squares,
orthogonal Procrustes, and Text-to-Concept's Linear Aligner.

All of them work in the same variance-aligned spaces as Zoom-shot and return a `Maps`, so evaluation
treats every method alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoomshot.cache.runs import Maps

from .method_settings import LinearAlignerSettings, LstsqSettings, ProcrustesSettings
from .ridge import Affine, Moments, gcv_ridge, moments, ridge_fit
from .spaces import affine_pinv, variance_scale
from .trainer import check_pairs, scaled_features, seeded_linear, shuffled_batches


def _scaled_moments(s: torch.Tensor, t: torch.Tensor, target_variance: float) -> tuple[Moments, float, float]:
    """Moments of the variance-aligned s and t, and the two scalars (c_s, c_t)."""
    check_pairs(s, t)
    c_s, c_t = variance_scale(s, target_variance), variance_scale(t, target_variance)
    return moments(s, t).scaled(c_s, c_t), c_s, c_t


def _to_maps(h: Affine, h_inv: Affine, c_s: float, c_t: float, fit: dict | None = None) -> Maps:
    (hw, hb), (iw, ib) = h, h_inv
    return Maps(*(x.float().cpu() for x in (hw, hb, iw, ib)), c_s, c_t, fit=fit or {})


def lstsq_maps(
    s: torch.Tensor,
    t: torch.Tensor,
    ridge: float = LstsqSettings.ridge,
    ridge_by_gcv: bool = LstsqSettings.ridge_by_gcv,
    target_variance: float = LstsqSettings.target_variance,
) -> Maps:
    """Closed-form ridge regression s -> t for h and, separately, t -> s for h_inv, in the scaled spaces.

    The strength of each is chosen by GCV from the training pairs (`fit/ridge.py`), or, with
    `ridge_by_gcv = False`, is `ridge`, relative to the mean eigenvalue of the input covariance (1e-6 only
    guards a singular covariance; 0 gives plain least squares). The chosen strengths are in `Maps.fit`.
    """
    mo, c_s, c_t = _scaled_moments(s, t, target_variance)
    r_h = gcv_ridge(mo.ss, mo.ts, float(torch.trace(mo.tt)), mo.n) if ridge_by_gcv else ridge
    r_inv = gcv_ridge(mo.tt, mo.ts.T, float(torch.trace(mo.ss)), mo.n) if ridge_by_gcv else ridge
    h = ridge_fit(mo.ss, mo.ts, mo.mean_s, mo.mean_t, r_h)
    h_inv = ridge_fit(mo.tt, mo.ts.T, mo.mean_t, mo.mean_s, r_inv)
    return _to_maps(
        h,
        h_inv,
        c_s,
        c_t,
        {"ridge": r_h, "ridge_h_inv": r_inv, "ridge_chosen_by": "gcv" if ridge_by_gcv else "setting"},
    )


def procrustes_maps(
    s: torch.Tensor, t: torch.Tensor, target_variance: float = ProcrustesSettings.target_variance
) -> Maps:
    """Scaled orthogonal Procrustes: h(s) = a W s + b with W (d, m) semi-orthogonal, h_inv = a' W^T t + b'.

    After centering, W = U V^T from the SVD U Sigma V^T of T_c^T S_c (d, m) maximises tr(W^T T_c^T S_c) over
    matrices with orthonormal rows (d <= m) or columns (d >= m), the "project / pad" of a rectangular
    orthogonal map done exactly. For d >= m (and d == m) this is also the least-squares optimum; for d < m it
    is the least-squares optimum when the source features are isotropic (S_c^T S_c proportional to I) and the
    standard correlation-maximising approximation otherwise (the exact unbalanced problem has no closed form).
    Variance alignment matches the spaces' overall variances, not the gain of the map between them (a bias
    or a projection changes it), so each direction also gets its least-squares global scale
    (a = tr(Sigma) / ||S_c W^T||^2, a' = tr(Sigma) / ||T_c W||^2; both 1 for an exact rotation between
    equal-variance spaces), and each bias is the mean difference through its map.
    """
    mo, c_s, c_t = _scaled_moments(s, t, target_variance)
    left, sv, right_t = torch.linalg.svd(mo.ts, full_matrices=False)
    w = left @ right_t
    a = sv.sum() / torch.trace(w @ mo.ss @ w.T)
    a_inv = sv.sum() / torch.trace(w.T @ mo.tt @ w)
    h = (a * w, mo.mean_t - a * w @ mo.mean_s)
    h_inv = (a_inv * w.T, mo.mean_s - a_inv * w.T @ mo.mean_t)
    return _to_maps(h, h_inv, c_s, c_t)


def linear_aligner_maps(
    s: torch.Tensor,
    t: torch.Tensor,
    fixed: bool = LinearAlignerSettings.fixed,
    epochs: int = LinearAlignerSettings.epochs,
    batch_size: int = LinearAlignerSettings.batch_size,
    lr: float = LinearAlignerSettings.lr,
    momentum: float = LinearAlignerSettings.momentum,
    weight_decay: float = LinearAlignerSettings.weight_decay,
    t_max: int = LinearAlignerSettings.t_max,
    target_variance: float = LinearAlignerSettings.target_variance,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[Maps, list[dict]]:
    """Text-to-Concept's Linear Aligner (k1rezaei/Text-to-concept, LinearAligner.py and TextToConcept.py).

    Their recipe: scale s by c1 and t by c2 so each has variance 4.5 over all entries; fit nn.Linear(m, d) with
    nn.MSELoss (mean over all entries), SGD lr 0.01 momentum 0.9 weight decay 5e-4 (bias included),
    CosineAnnealingLR(T_max=200) stepped once per epoch, shuffled batches of 100, 5 epochs
    (`TextToConcept.train_linear_aligner(epochs=5)`; `LinearAligner.train` itself defaults to 6). Rows are
    gathered by a seeded index permutation instead of their DataLoader: the same sampling scheme (a fresh
    uniform permutation every epoch), without the worker. The variance is theirs (see `variance_scale`).
    They then export W * c1/c2 and b * c1/c2 as the raw-space
    map; the exact undoing of the scaling is b / c2 (the bias was fitted in the scaled target space), so their
    bias is off by the factor c1. With `fixed=False` (faithful) we store h_bias = b * c1 so that `to_clip`
    returns exactly their s @ (W c1/c2)^T + b c1/c2; with `fixed=True`, h_bias = b and `to_clip` is the exact
    inverse of the scaling. Their code has no inverse map; h_inv is the affine pseudo-inverse of the stored h.
    History records per epoch: "total" is their criterion (MSE per entry), "mse" the same loss in Zoom-shot's
    convention (summed over the d dimensions), so the two methods' logs compare.
    """
    x, y, _, c1, c2 = scaled_features(s, t, None, target_variance, device)
    generator = torch.Generator().manual_seed(seed)
    layer = seeded_linear(x.shape[1], y.shape[1], generator, device)
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max)
    history = []
    for epoch in range(epochs):
        loss_sum = torch.zeros((), device=device)
        for idx in shuffled_batches(x.shape[0], batch_size, generator, device):
            loss = F.mse_loss(layer(x.index_select(0, idx)), y.index_select(0, idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
        scheduler.step()
        per_entry = float(loss_sum) / x.shape[0]
        history.append({"epoch": epoch, "total": per_entry, "mse": per_entry * y.shape[1]})
    weight, bias = layer.weight.detach().cpu(), layer.bias.detach().cpu()
    h_bias = bias if fixed else bias * c1
    return Maps(weight, h_bias, *affine_pinv(weight, h_bias), c1, c2), history
