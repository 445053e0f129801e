"""Zoom-shot's loss terms (DESIGN.md section 5) as pure functions of one batch.

All inputs are already variance-scaled: s (B, m) source features, t (B, d) CLIP image features of the same
images, u (K, d) CLIP text features of the class-free prompt set, every space with the variance
`target_variance` over its entries. `h` and `h_inv` are any callables on rows (the trainer passes its two
affine modules).

Every term is on one scale, so that a weight of 1 means the same for each: a mean per element, divided by
what the term is for a trivial guess. L_mse is the share of the target's variance left unexplained
(mean squared error / variance: 1 for predicting the mean); an L1 cycle term is the mean absolute error in
units of the space's standard deviation; PG-KD `lm` is the share of the teacher logits' variance over the
prompts left unexplained, `ht-ce` and `kl` are in units of log K (a uniform guess over K prompts). None
depends on the batch size, the feature widths or the number of prompts. `scaled=False` drops every
divisor (the terms in their raw units, as the paper writes them: the `paper` preset).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from zoomshot.cache.zero_shot import clip_logits

Map = Callable[[torch.Tensor], torch.Tensor]


def mse_loss(h_s: torch.Tensor, t: torch.Tensor, variance: float) -> torch.Tensor:
    """L_mse = mean over elements of (h(s) - t)^2 / variance: the share of t's variance h leaves unexplained."""
    return F.mse_loss(h_s, t) / variance


def l1_loss(pred: torch.Tensor, target: torch.Tensor, std: float) -> torch.Tensor:
    """One cycle term: mean over elements of |pred - target|, in units of the space's standard deviation."""
    return (pred - target).abs().mean() / std


def cycle_terms(
    s: torch.Tensor | None,
    t: torch.Tensor | None,
    u: torch.Tensor | None,
    h: Map,
    h_inv: Map,
    std: float,
    h_s: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The cycle-consistency terms separately, keyed "cyc_s", "cyc_t", "cyc_u"; a None input skips its term.

    cyc_s = |h_inv(h(s)) - s|, cyc_t = |h(h_inv(t)) - t|, cyc_u = |h(h_inv(u)) - u| (over the whole prompt
    set), each `l1_loss`. Separate terms let ablations switch the text cycle off; `h_s` reuses an h(s) the
    caller already computed.
    """
    terms = {}
    if s is not None:
        terms["cyc_s"] = l1_loss(h_inv(h(s) if h_s is None else h_s), s, std)
    for name, x in (("cyc_t", t), ("cyc_u", u)):
        if x is not None:
            terms[name] = l1_loss(h(h_inv(x)), x, std)
    return terms


def _logit_matching(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error between the logits; its unit: the teacher logits' variance across the prompts."""
    return F.mse_loss(z_s, z_t), z_t.var(dim=-1).mean().clamp_min(1e-12)


def _hard_target_ce(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the student against the teacher's argmax prompt; its unit: log K."""
    return F.cross_entropy(z_s, z_t.argmax(dim=-1)), math.log(z_s.shape[-1])


def _kl(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
    """KL(softmax(z_T / T) || softmax(z_S / T)), mean over rows; its unit: log K."""
    log_p_t = F.log_softmax(z_t / temperature, dim=-1)
    log_p_s = F.log_softmax(z_s / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean"), math.log(z_s.shape[-1])


#: each variant's raw value and the unit that puts it on the common scale
KD_VARIANTS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor | float]]] = {
    "lm": _logit_matching,
    "ht-ce": _hard_target_ce,
    "kl": _kl,
}


def pgkd_loss(
    h_s: torch.Tensor,
    t: torch.Tensor,
    u: torch.Tensor,
    tau: float = 100.0,
    variant: str = "lm",
    temperature: float = 1.0,
    scaled: bool = True,
) -> torch.Tensor:
    """Prompt-guided distillation: teacher z_T = tau*cos(t, u_k), student z_S = tau*cos(h(s), u_k) over prompts u_k.

    `lm` (logit matching) is the mean squared error between the logits (Ba & Caruana 2014; Kim et al. 2021
    call MSE on logits "logit matching" as opposed to KL on softmaxes): it keeps every image's whole
    similarity profile against every prompt. `kl` compares the softmaxes at a temperature (at CLIP's
    tau = 100 and T = 1 they are nearly one-hot, close to `ht-ce`; a higher T softens them). `ht-ce` is the
    cross-entropy of z_S against the teacher's argmax prompt. Each is minimal when the student equals the
    teacher (`lm` and `kl`: exactly 0). `scaled` divides by the variant's unit (module docstring). The
    paper's exact LM formula could not be retrieved; see docs/method.md.
    """
    if variant not in KD_VARIANTS:
        raise ValueError(f"unknown PG-KD variant {variant!r}; valid: {sorted(KD_VARIANTS)}")
    with torch.no_grad():
        z_t = clip_logits(t, u, tau)
    value, unit = KD_VARIANTS[variant](clip_logits(h_s, u, tau), z_t, temperature)
    return value / unit if scaled else value


def total_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    u: torch.Tensor | None,
    h: Map,
    h_inv: Map,
    *,
    w_mse: float = 1.0,
    w_cyc: float = 0.0,
    w_cyc_text: float = 0.0,
    w_kd: float = 0.0,
    tau: float = 100.0,
    kd_variant: str = "lm",
    kd_temperature: float = 1.0,
    target_variance: float = 4.5,
    scaled: bool = True,
    h_s: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = w_mse L_mse + w_cyc (cyc_s + cyc_t) + w_cyc_text cyc_u + w_kd L_pgkd, skipping every zero-weight term.

    The text cycle has its own weight so that ablations can keep the image cycles and drop it (w_cyc =
    w_cyc_text reproduces DESIGN.md's single L_cyc). `target_variance` is the variance the spaces were
    scaled to (the terms' normalisation, dropped with `scaled=False`); `h_s` is h(s) when the caller has
    it already. Returns the total and the unweighted terms that were computed, as detached 0-d tensors
    (call float() on them; keeping tensors lets a trainer on a GPU sum them over an epoch without a device
    sync per batch).
    """
    weights = {"mse": w_mse, "cyc_s": w_cyc, "cyc_t": w_cyc, "cyc_u": w_cyc_text, "kd": w_kd}
    if any(w < 0 for w in weights.values()) or not any(weights.values()):
        raise ValueError(f"loss weights must be >= 0 and not all 0, got {weights}")
    if u is None and (w_kd or w_cyc_text):
        raise ValueError("PG-KD and the text cycle term need a prompt set u; set w_kd = w_cyc_text = 0 without one")
    if h_s is None and (w_mse or w_cyc or w_kd):
        h_s = h(s)
    variance = target_variance if scaled else 1.0
    terms = cycle_terms(
        s if w_cyc else None, t if w_cyc else None, u if w_cyc_text else None, h, h_inv, math.sqrt(variance), h_s=h_s
    )
    if w_mse:
        terms["mse"] = mse_loss(h_s, t, variance)
    if w_kd:
        terms["kd"] = pgkd_loss(h_s, t, u, tau, kd_variant, kd_temperature, scaled)
    total = sum(weights[name] * term for name, term in terms.items())
    return total, {name: term.detach() for name, term in terms.items()}
