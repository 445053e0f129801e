"""Zoom-shot's training loop: h and h_inv trained together on cached feature tensors (DESIGN.md section 5).

The whole feature matrices go to the device once; every epoch is a seeded permutation of row indices cut into
batches that are gathered by indexing. There is no DataLoader: the rows are already in memory, and at these
sizes a DataLoader's per-batch Python and worker overhead costs more than the matmuls (DESIGN.md section 8;
benchmarks/fit_speed.py measures it).

Two things make the result independent of guessing the batch size or the data size:
* every epoch takes at least `steps_per_epoch` optimizer steps (the batch shrinks for few rows), so a small
  training set is not left after a handful of steps; an epoch is still one pass over the rows;
* each map is trained (unless `whiten = False`) in whitened input coordinates (`WhitenedLinear`), an exact
  reparametrisation that makes the reconstruction loss perfectly conditioned, so Adam reaches its optimum
  in those steps even when the features are anisotropic or the rows barely outnumber the dimensions.

Both are departures of the `tuned` preset from the paper (fit/presets.py, docs/method.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zoomshot.cache.runs import Maps

from .losses import total_loss
from .method_settings import TrainConfig
from .ridge import absolute, gcv_ridge, moments, ridge_fit
from .spaces import ROWS_PER_CHUNK, affine_pinv, variance_scale

# The optimizers and schedules that TrainConfig names (fit/method_settings.py).
OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]] = {
    # fused: one kernel for all parameters (12x faster than the default loop for a 2048 x 512 map on a CPU)
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True),
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True),
    "sgd": lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
}

# Learning-rate schedules over the total number of optimizer steps.
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]] = {
    "cosine": lambda opt, steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
    "constant": lambda opt, steps: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0),
}


def seeded_linear(n_in: int, n_out: int, generator: torch.Generator, device: str | torch.device) -> nn.Linear:
    """An nn.Linear with PyTorch's default initialisation drawn from `generator`, not the global RNG.

    Initialising on the CPU makes the starting weights identical on every device.
    """
    layer = nn.Linear(n_in, n_out, device="meta").to_empty(device="cpu")
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(n_in)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer.to(device)


class WhitenedLinear(nn.Module):
    """x -> W (x - mean_in) + b with W = W' P, b starting at the output mean: an affine map reparametrised
    for conditioning, optionally with a ridge penalty lam ||W||^2.

    Cached features are far from centered and far from isotropic (post-ReLU pooling, CLIP's embedding cone),
    so a plain affine map has its bias and weights strongly coupled and gradient steps crawl along the
    low-variance directions; with few rows the reconstruction problem is nearly singular. Training W' with
    P = (Lambda + alpha)^-1/2 V^T (V Lambda V^T the input covariance, alpha = lam / N) makes the curvature of
    the ridge-penalised reconstruction the identity in W', so every direction converges at the same rate.
    Without a penalty (alpha = 0), directions whose variance is below `rcond` times the largest carry no
    signal to fit and map to 0, so an untrained direction never enters a prediction amplified. It
    represents the same affine maps (on the directions the data spans); `affine()` folds P and the shift
    back into an ordinary weight and bias.
    """

    def __init__(
        self,
        mean_in: torch.Tensor,
        spectrum: tuple[torch.Tensor, torch.Tensor] | None,
        mean_out: torch.Tensor,
        alpha: float,
        generator: torch.Generator,
        rcond: float = 1e-6,
    ) -> None:
        """`spectrum`: (eigenvalues, eigenvectors) of the input covariance (float64, `torch.linalg.eigh`), or
        None for the plain parametrisation (P = I, no shift, PyTorch's random bias: Adam on the raw weights)."""
        super().__init__()
        self.linear = seeded_linear(mean_in.shape[0], mean_out.shape[0], generator, mean_in.device)
        if spectrum is None:
            eye = torch.eye(mean_in.shape[0], dtype=torch.float64, device=mean_in.device)
            mean_in, p, p_pinv, inv_sqrt = torch.zeros_like(mean_in), eye, eye, eye.diagonal()
        else:
            eigenvalues, vectors = spectrum
            eigenvalues = eigenvalues.clamp(min=0) + alpha
            keep = eigenvalues > (rcond * eigenvalues.max() if alpha == 0 else 0)
            inv_sqrt = torch.where(keep, eigenvalues.clamp(min=1e-300).rsqrt(), torch.zeros_like(eigenvalues))
            p = inv_sqrt[:, None] * vectors.T
            # P^+ = V diag(sqrt(lambda + alpha)) on the directions P keeps (no SVD needed)
            p_pinv = vectors * torch.where(keep, eigenvalues.sqrt(), 0.0)
            with torch.no_grad():
                self.linear.bias.copy_(mean_out)
        dtype = self.linear.weight.dtype
        self.register_buffer("mean_in", mean_in.to(dtype))
        self.register_buffer("p", p.to(dtype))
        self.register_buffer("p_pinv", p_pinv.to(dtype))
        self.register_buffer("penalty_scale", (alpha * inv_sqrt**2).to(dtype))  # lam/N ||W||^2 in W'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < self.linear.out_features:  # few rows: whiten them (cheaper than folding P)
            return self.linear((x - self.mean_in) @ self.p.T)
        weight = self.linear.weight @ self.p
        return F.linear(x, weight, self.linear.bias - weight @ self.mean_in)

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        """P (x - mean_in) of every row, in chunks: a trainer whitens its training rows once, so that a step
        on them costs a plain linear layer (`self.linear`)."""
        return torch.cat([(chunk - self.mean_in) @ self.p.T for chunk in x.split(ROWS_PER_CHUNK)])

    def start_at(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start from the affine map x -> weight x + bias (W' = weight P^+, on the directions P keeps)."""
        with torch.no_grad():
            self.linear.weight.copy_(weight.double() @ self.p_pinv.double())
            self.linear.bias.copy_(bias + weight.double() @ self.mean_in.double())

    def penalty(self) -> torch.Tensor:
        """alpha ||W||^2 (= lam ||W||^2 / N), computed in W' without forming W; its gradient is
        2 W' penalty_scale."""
        return (self.linear.weight.detach().pow(2) * self.penalty_scale).sum()

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the same map written as x -> weight x + bias, on the CPU."""
        weight = (self.linear.weight @ self.p).detach()
        return weight.cpu(), (self.linear.bias.detach() - weight @ self.mean_in).cpu()


def batch_for(rows: int, cfg: TrainConfig) -> int:
    """The batch size of a fit: `batch_size` at most, and small enough for `steps_per_epoch` steps."""
    return max(1, min(cfg.batch_size, math.ceil(rows / cfg.steps_per_epoch)))


def shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator, device: str | torch.device
) -> tuple[torch.Tensor, ...]:
    """One epoch's row indices: a seeded permutation of range(n) on `device`, cut into batches (last may be short)."""
    return torch.randperm(n, generator=generator).to(device).split(batch_size)


def check_pairs(s: torch.Tensor, t: torch.Tensor) -> None:
    """Raise ValueError unless s (N, m) and t (N, d) are non-empty matrices with the same rows."""
    if s.dim() != 2 or t.dim() != 2 or s.shape[0] != t.shape[0] or s.shape[0] == 0:
        shapes = f"{tuple(s.shape)} and {tuple(t.shape)}"
        raise ValueError(f"s and t must be non-empty row-aligned matrices, got {shapes}")


def scaled_features(
    s: torch.Tensor, t: torch.Tensor, u: torch.Tensor | None, target: float, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float, float]:
    """Move to the device as float32 and variance-scale: s by its own scalar, t and u by CLIP's (computed on t).

    Returns the scaled s, t, u and the scalars (c_s, c_t).
    """
    check_pairs(s, t)
    if u is not None and (u.dim() != 2 or u.shape[1] != t.shape[1]):
        raise ValueError(f"prompt set u must be (K, {t.shape[1]}), got {tuple(u.shape)}")
    s, t = s.to(device, torch.float32), t.to(device, torch.float32)
    c_s, c_t = variance_scale(s, target), variance_scale(t, target)
    return s * c_s, t * c_t, None if u is None else u.to(device, torch.float32) * c_t, c_s, c_t


def train_maps(
    s: torch.Tensor,
    t: torch.Tensor,
    u: torch.Tensor | None,
    cfg: TrainConfig,
    progress: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[Maps, list[dict]]:
    """Fit h: R^m -> R^d and h_inv: R^d -> R^m on row-aligned s (N, m), t (N, d) and prompt set u (K, d) or None.

    Returns the maps and one record per epoch: {"epoch", "total", and each computed loss term}, each the
    row-weighted mean over the epoch's batches. `on_epoch` receives every record as it is made. h_inv is
    trained only by the cycle terms; when both cycle weights are 0 nothing trains it, and it is set to the
    affine pseudo-inverse of the trained h instead. Deterministic for a given seed on the CPU and a
    given intra-op thread count (`methods.fit_method` sets it).
    """
    device = torch.device(cfg.device)
    s, t, u, c_s, c_t = scaled_features(s, t, u, cfg.target_variance, device)
    n = s.shape[0]
    generator = torch.Generator().manual_seed(cfg.seed)
    mo = moments(s, t)
    spectrum_s, spectrum_t = torch.linalg.eigh(mo.ss), torch.linalg.eigh(mo.tt)  # of the sums; / n: covariances
    ridge = (
        gcv_ridge(mo.ss, mo.ts, float(torch.trace(mo.tt)), n, spectrum=spectrum_s) if cfg.ridge_by_gcv else cfg.ridge
    )
    whitened = (lambda spectrum: (spectrum[0] / n, spectrum[1])) if cfg.whiten else (lambda spectrum: None)
    h = WhitenedLinear(mo.mean_s, whitened(spectrum_s), mo.mean_t, absolute(ridge, mo.ss) / n, generator)
    h_inv = WhitenedLinear(mo.mean_t, whitened(spectrum_t), mo.mean_s, 0.0, generator)
    if cfg.init == "ridge":  # start where the reconstruction alone ends: the ridge closed forms
        h.start_at(*ridge_fit(mo.ss, mo.ts, mo.mean_s, mo.mean_t, ridge))
        h_inv.start_at(*ridge_fit(mo.tt, mo.ts.T, mo.mean_t, mo.mean_s, cfg.ridge))
    ridge_scale = cfg.w_mse / (t.shape[1] * (cfg.target_variance if cfg.scale_terms else 1.0))  # on L_mse's scale
    s_white = h.whiten(s)
    trains_inverse = bool(cfg.w_cyc or cfg.w_cyc_text)
    params = [*h.parameters(), *h_inv.parameters()] if trains_inverse else list(h.parameters())
    optimizer = OPTIMIZERS[cfg.optimizer](params, cfg)
    batch = batch_for(n, cfg)
    scheduler = SCHEDULES[cfg.schedule](optimizer, cfg.epochs * math.ceil(n / batch))
    loss_fn = functools.partial(
        total_loss,
        w_mse=cfg.w_mse,
        w_cyc=cfg.w_cyc,
        w_cyc_text=cfg.w_cyc_text,
        w_kd=cfg.w_kd,
        tau=cfg.tau,
        kd_variant=cfg.kd_variant,
        kd_temperature=cfg.kd_temperature,
        target_variance=cfg.target_variance,
        scaled=cfg.scale_terms,
    )
    if cfg.compile:
        loss_fn = torch.compile(loss_fn)
    history = []
    for epoch in (bar := tqdm(range(cfg.epochs), desc="fit", unit="epoch", disable=not progress)):
        sums: dict[str, torch.Tensor] = {}
        for idx in shuffled_batches(n, batch, generator, device):
            h_s = h.linear(s_white.index_select(0, idx))
            total, parts = loss_fn(s.index_select(0, idx), t.index_select(0, idx), u, h, h_inv, h_s=h_s)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if ridge_scale:  # the ridge's gradient, added directly: cheaper than a term in the graph
                with torch.no_grad():
                    h.linear.weight.grad.addcmul_(h.linear.weight, h.penalty_scale, value=2 * ridge_scale)
            optimizer.step()
            scheduler.step()
            for name, value in {"total": total.detach(), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value * len(idx)
        record = {"epoch": epoch, **{name: float(value) / n for name, value in sums.items()}}
        if ridge_scale:
            record["ridge"] = float(ridge_scale * h.penalty())
            record["total"] += record["ridge"]
        history.append(record)
        bar.set_postfix(loss=f"{record['total']:.4g}")
        if on_epoch is not None:
            on_epoch(record)
    h_weight, h_bias = h.affine()
    hinv_weight, hinv_bias = h_inv.affine() if trains_inverse else affine_pinv(h_weight, h_bias)
    fit = {
        "batch_size": batch,
        "steps": cfg.epochs * math.ceil(n / batch),
        "ridge": ridge,
        "ridge_chosen_by": "gcv" if cfg.ridge_by_gcv else "setting",
    }
    return Maps(h_weight, h_bias, hinv_weight, hinv_bias, c_s, c_t, fit=fit), history
