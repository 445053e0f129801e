"""Zoom-shot's training loop: h and h_inv trained together on cached feature tensors (DESIGN.md section 5).

The whole feature matrices go to the device once; every epoch is a seeded permutation of row indices cut into
large batches that are gathered by indexing. There is no DataLoader: the rows are already in memory, and at
these sizes a DataLoader's per-batch Python and worker overhead costs more than the matmuls (DESIGN.md
section 8; benchmarks/fit_speed.py measures it).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zoomshot.cache.runs import Maps

from .losses import KD_VARIANTS, total_loss
from .maps import affine_pinv, variance_scale

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], "TrainConfig"], torch.optim.Optimizer]] = {
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda params, cfg: torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    ),
}

# Learning-rate schedules over the total number of optimizer steps.
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]] = {
    "cosine": lambda opt, steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
    "constant": lambda opt, steps: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0),
}


@dataclass
class TrainConfig:
    """Settings of one Zoom-shot fit.

    The defaults are Adam, lr 3e-2 with cosine decay to 0 over all steps, batch 2,048, 20 epochs. What
    converges is the number of optimizer steps: with few rows, lower batch_size or raise epochs (the full
    objective needs more steps than MSE alone); benchmarks/fit_speed.py measures convergence and speed.
    The loss weights default to the full Zoom-shot objective (DESIGN.md section 5); w_cyc weighs the two image
    cycle terms and w_cyc_text the prompt-set cycle term, so w_cyc == w_cyc_text is the paper's single L_cyc.
    """

    epochs: int = 20
    batch_size: int = 2048
    lr: float = 3e-2
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    w_mse: float = 1.0
    w_cyc: float = 1.0
    w_cyc_text: float = 1.0
    w_kd: float = 1.0
    kd_variant: str = "lm"
    tau: float = 100.0
    target_variance: float = 4.5
    seed: int = 0
    device: str = "cpu"
    compile: bool = False

    def __post_init__(self) -> None:
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "kd_variant": KD_VARIANTS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} = {getattr(self, name)!r} is not one of {sorted(valid)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "tau", "target_variance"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        weights = {name: getattr(self, name) for name in ("w_mse", "w_cyc", "w_cyc_text", "w_kd")}
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"loss weights must be >= 0 and not all 0, got {weights}")


def seeded_linear(n_in: int, n_out: int, generator: torch.Generator, device: str | torch.device) -> nn.Linear:
    """An nn.Linear with PyTorch's default initialisation drawn from `generator`, not the global RNG.

    Initialising on the CPU makes the starting weights identical on every device.
    """
    layer = nn.Linear(n_in, n_out, device="meta").to_empty(device="cpu")
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(n_in)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer.to(device)


class CenteredLinear(nn.Module):
    """x -> W (x - mean_in) + b, with b starting at mean_out: an nn.Linear reparametrised for conditioning.

    Cached features are far from centered (post-ReLU pooling, CLIP's embedding cone), so a plain affine map
    has its bias and weights strongly coupled and gradient steps crawl along the mean direction. Subtracting
    the fixed input mean decouples them, and starting the bias at the output mean starts from the best constant
    predictor. It represents exactly the same affine maps; `affine()` folds the shift back into the bias.
    """

    def __init__(self, mean_in: torch.Tensor, mean_out: torch.Tensor, generator: torch.Generator) -> None:
        super().__init__()
        self.linear = seeded_linear(mean_in.shape[0], mean_out.shape[0], generator, mean_in.device)
        with torch.no_grad():
            self.linear.bias.copy_(mean_out)
        self.register_buffer("mean_in", mean_in.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # W (x - mean_in) + b, with the shift folded into the bias: no extra pass over the batch.
        return F.linear(x, self.linear.weight, self.linear.bias - self.linear.weight @ self.mean_in)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the same map written as x -> weight x + bias, on the CPU."""
        weight = self.linear.weight.detach()
        return weight.cpu(), (self.linear.bias.detach() - weight @ self.mean_in).cpu()


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
    affine pseudo-inverse of the trained h instead. Deterministic for a given seed on the CPU.
    """
    device = torch.device(cfg.device)
    s, t, u, c_s, c_t = scaled_features(s, t, u, cfg.target_variance, device)
    n = s.shape[0]
    generator = torch.Generator().manual_seed(cfg.seed)
    mean_s, mean_t = s.mean(dim=0), t.mean(dim=0)
    h = CenteredLinear(mean_s, mean_t, generator)
    h_inv = CenteredLinear(mean_t, mean_s, generator)
    trains_inverse = bool(cfg.w_cyc or cfg.w_cyc_text)
    params = [*h.parameters(), *h_inv.parameters()] if trains_inverse else list(h.parameters())
    optimizer = OPTIMIZERS[cfg.optimizer](params, cfg)
    scheduler = SCHEDULES[cfg.schedule](optimizer, cfg.epochs * math.ceil(n / cfg.batch_size))
    loss_fn = functools.partial(
        total_loss, w_mse=cfg.w_mse, w_cyc=cfg.w_cyc, w_cyc_text=cfg.w_cyc_text, w_kd=cfg.w_kd,
        tau=cfg.tau, kd_variant=cfg.kd_variant,
    )
    if cfg.compile:
        loss_fn = torch.compile(loss_fn)
    history = []
    for epoch in (bar := tqdm(range(cfg.epochs), desc="fit", unit="epoch", disable=not progress)):
        sums: dict[str, torch.Tensor] = {}
        for idx in shuffled_batches(n, cfg.batch_size, generator, device):
            total, parts = loss_fn(s.index_select(0, idx), t.index_select(0, idx), u, h, h_inv)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            for name, value in {"total": total.detach(), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value * len(idx)
        record = {"epoch": epoch, **{name: float(value) / n for name, value in sums.items()}}
        history.append(record)
        bar.set_postfix(loss=f"{record['total']:.4g}")
        if on_epoch is not None:
            on_epoch(record)
    h_weight, h_bias = h.affine()
    hinv_weight, hinv_bias = h_inv.affine() if trains_inverse else affine_pinv(h_weight, h_bias)
    return Maps(h_weight, h_bias, hinv_weight, hinv_bias, c_s, c_t), history
