"""Zoom-shot's loss terms (DESIGN.md section 5) as pure functions of one batch.

All inputs are already variance-scaled: s (B, m) source features, t (B, d) CLIP image features of the same
images, u (K, d) CLIP text features of the class-free prompt set. `h` and `h_inv` are any callables on rows
(the trainer passes its two affine modules). Norm-based terms sum over the feature dimension and average over
rows, so a term's size does not depend on the batch size.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Map = Callable[[torch.Tensor], torch.Tensor]


def mse_loss(h_s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """L_mse = mean over rows of ||h(s) - t||_2^2 (squared error summed over the d dimensions)."""
    return F.mse_loss(h_s, t, reduction="sum") / h_s.shape[0]


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ||pred - target||_1 (absolute error summed over dimensions): one cycle term."""
    return (pred - target).abs().sum(dim=-1).mean()


def cycle_terms(
    s: torch.Tensor | None,
    t: torch.Tensor | None,
    u: torch.Tensor | None,
    h: Map,
    h_inv: Map,
    h_s: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The cycle-consistency terms separately, keyed "cyc_s", "cyc_t", "cyc_u"; a None input skips its term.

    cyc_s = mean |h_inv(h(s)) - s|_1, cyc_t = mean |h(h_inv(t)) - t|_1, cyc_u = mean |h(h_inv(u)) - u|_1 (over
    the whole prompt set). Separate terms let ablations switch the text cycle off; `h_s` reuses an h(s) the
    caller already computed.
    """
    terms = {}
    if s is not None:
        terms["cyc_s"] = l1_loss(h_inv(h(s) if h_s is None else h_s), s)
    for name, x in (("cyc_t", t), ("cyc_u", u)):
        if x is not None:
            terms[name] = l1_loss(h(h_inv(x)), x)
    return terms


def prompt_logits(x: torch.Tensor, u_unit: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * cos(x, u_k) for every row of x against unit-norm prompt rows u_unit (K, d): CLIP's zero-shot logits."""
    return tau * F.normalize(x, dim=-1) @ u_unit.T


def _logit_matching(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(z_s, z_t)


def _hard_target_ce(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(z_s, z_t.argmax(dim=-1))


KD_VARIANTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "lm": _logit_matching,
    "ht-ce": _hard_target_ce,
}


def pgkd_loss(
    h_s: torch.Tensor, t: torch.Tensor, u: torch.Tensor, tau: float = 100.0, variant: str = "lm"
) -> torch.Tensor:
    """Prompt-guided distillation: teacher z_T = tau*cos(t, u_k), student z_S = tau*cos(h(s), u_k) over prompts u_k.

    `lm` (logit matching) is the mean squared error between the logits, averaged over rows and prompts: the
    direct reading of "logit matching" (Ba & Caruana 2014; Kim et al. 2021 call MSE on logits "logit matching"
    as opposed to KL on softmaxes, which approaches label matching at low temperature). At CLIP's tau = 100 a
    softmax over prompts is nearly one-hot, so KL would mostly repeat the `ht-ce` signal, while MSE keeps the
    full similarity profile of every image against every prompt; averaging over prompts keeps the weight
    w_kd meaningful when the prompt set size K changes. `ht-ce` is the cross-entropy of z_S against the
    teacher's argmax prompt. Both variants are minimal (`lm`: exactly 0) when the student equals the teacher.
    """
    if variant not in KD_VARIANTS:
        raise ValueError(f"unknown PG-KD variant {variant!r}; valid: {sorted(KD_VARIANTS)}")
    u_unit = F.normalize(u, dim=-1)
    with torch.no_grad():
        z_t = prompt_logits(t, u_unit, tau)
    return KD_VARIANTS[variant](prompt_logits(h_s, u_unit, tau), z_t)


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = w_mse L_mse + w_cyc (cyc_s + cyc_t) + w_cyc_text cyc_u + w_kd L_pgkd, skipping every zero-weight term.

    The text cycle has its own weight so that ablations can keep the image cycles and drop it (w_cyc =
    w_cyc_text reproduces DESIGN.md's single L_cyc). Returns the total and the unweighted terms that were
    computed, as detached 0-d tensors (call float() on them; keeping tensors lets a trainer on a GPU sum them
    over an epoch without a device sync per batch).
    """
    weights = {"mse": w_mse, "cyc_s": w_cyc, "cyc_t": w_cyc, "cyc_u": w_cyc_text, "kd": w_kd}
    if any(w < 0 for w in weights.values()) or not any(weights.values()):
        raise ValueError(f"loss weights must be >= 0 and not all 0, got {weights}")
    if u is None and (w_kd or w_cyc_text):
        raise ValueError("PG-KD and the text cycle term need a prompt set u; set w_kd = w_cyc_text = 0 without one")
    h_s = h(s) if (w_mse or w_cyc or w_kd) else None
    terms = cycle_terms(s if w_cyc else None, t if w_cyc else None, u if w_cyc_text else None, h, h_inv, h_s=h_s)
    if w_mse:
        terms["mse"] = mse_loss(h_s, t)
    if w_kd:
        terms["kd"] = pgkd_loss(h_s, t, u, tau, kd_variant)
    total = sum(weights[name] * term for name, term in terms.items())
    return total, {name: term.detach() for name, term in terms.items()}
