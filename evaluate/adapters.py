"""Training-free adaptation of zero-shot CLIP with a labelled support set: Tip-Adapter and TIP-X.

Pure torch functions on features (no file, no model). Every feature is L2-normalised here, so raw
cached CLIP features and mapped encoder features `h(s)` can be passed as they are. Notation: f (N, d)
test features, F (S, d) support features, L (S, C) one-hot support labels, W (C, d) class text
embeddings, all unit rows.

Zero-shot CLIP (the base of both, CLIP's logit scale)::

    ZS = 100 * f W^T

Tip-Adapter (Zhang et al., arXiv 2207.09519, Sec. 3.1, the cache model: affinities and logits; checked
against gaopengcuhk/Tip-Adapter at commit 327763e: `main.py` run_tip_adapter, lines 27-63, and
`utils.py` search_hp, lines 99-129)::

    A = exp(-beta * (1 - f F^T))                                  (N, S)
    logits = ZS + alpha * A L

TIP-X (Udandarao et al., SuS-X, arXiv 2211.16198, Sec. 3.2; checked against vishaal27/SuS-X
`tipx.py` at commit 0910683: signatures lines 17-27, KL lines 29-43, rescaling `scale_` lines 60-66,
logits and search `hparam_search` lines 68-132, logits at line 100)::

    s = softmax(f W^T / T),  S_sig = softmax(F W^T / T)            signatures over the C class texts
    M_ij = KL(s_i || S_sig_j) = sum_c s_ic (log s_ic - log S_sig_jc)   (N, S) divergence matrix
    psi(M) = min-max rescaling of M onto [min(f F^T), max(f F^T)]   (tipx.py `scale_(kl, new_knowledge)`)
    logits = ZS + alpha * A L + gamma * (-psi(M)) L

The reference takes T = 0.5 (its `--temperature` default) and rescales over the whole evaluated
matrix (all val, or all test rows at once), so psi depends on the set being scored; `tipx_logits`
does the same by default and takes `ranges` computed over a whole streamed test set
(`tipx_ranges`) so that scoring in chunks gives the one-shot numbers. One deliberate difference: at
test time the reference rescales the test KL matrix onto the range of the *validation* cosines
(`new_knowledge` still holds val f F^T at tipx.py line 117); we use the scored rows' own cosines,
as for validation. The reference also drops the last `N % 100` rows of each KL matrix
(`range(N // bs)` at tipx.py line 33, they stay 0); we compute every row.

Hyper-parameters are searched on a validation split of labelled rows (`search_hparams`), by
top-1 accuracy, over a grid (`grids.GRIDS`: the references' lists, or wider geometric ones, the default);
the first best in the reference's loop order wins ties (Tip-Adapter: beta outer, alpha inner; TIP-X:
alpha, beta, gamma). A choice on the edge of its grid is reported (`at_grid_edge`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zoomshot.cache.zero_shot import clip_logits, cosine_similarities

from .grids import DEFAULT_GRIDS

#: Softmax temperature of the TIP-X signatures (SuS-X tipx.py `--temperature` default).
TIPX_TEMPERATURE = 0.5


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.float(), dim=-1)


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    labels = torch.as_tensor(labels).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"support labels must lie in [0, {num_classes})")
    return F.one_hot(labels, num_classes).float()


def cache_affinity(test: Tensor, support: Tensor, beta: float) -> Tensor:
    """Tip-Adapter's A = exp(-beta (1 - f F^T)), (N, S)."""
    return torch.exp(-beta * (1.0 - _unit(test) @ _unit(support).T))


def tip_adapter_logits(
    test: Tensor, support: Tensor, support_labels: Tensor, class_emb: Tensor, alpha: float, beta: float
) -> Tensor:
    """(N, C) Tip-Adapter logits: 100 f W^T + alpha exp(-beta (1 - f F^T)) L. alpha = 0 gives exactly
    `clip_logits`."""
    zs = clip_logits(test, class_emb)
    if alpha == 0:
        return zs
    return zs + alpha * (cache_affinity(test, support, beta) @ _one_hot(support_labels, class_emb.shape[0]))


def signatures(features: Tensor, class_emb: Tensor, temperature: float = TIPX_TEMPERATURE) -> Tensor:
    """TIP-X signatures: softmax over the classes of cosine(image, class text) / temperature, (N, C)."""
    return torch.softmax(cosine_similarities(features, class_emb) / temperature, dim=-1)


def kl_signature_affinity(test_sig: Tensor, support_sig: Tensor) -> Tensor:
    """TIP-X's divergence matrix M, (N, S): M_ij = KL(test_sig_i || support_sig_j)
    = sum_c p_ic (log p_ic - log q_jc). Zero for identical signatures, larger for less similar images
    (the affinity that enters the logits is -psi(M), see `tipx_logits`). Terms with p_ic = 0 count 0."""
    p, q = test_sig.double(), support_sig.double()
    p_log_p = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(dim=1, keepdim=True)
    return (p_log_p - p @ torch.log(q).T).float().clamp_min(0.0)


@dataclass(frozen=True)
class TipXRanges:
    """What psi needs: the range of M (the source) and of f F^T (the target) over the scored set."""

    kl_min: float
    kl_max: float
    cos_min: float
    cos_max: float

    def merge(self, other: TipXRanges) -> TipXRanges:
        return TipXRanges(
            min(self.kl_min, other.kl_min),
            max(self.kl_max, other.kl_max),
            min(self.cos_min, other.cos_min),
            max(self.cos_max, other.cos_max),
        )


def _parts(test: Tensor, support: Tensor, class_emb: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(f F^T, M) of the given rows."""
    cos = _unit(test) @ _unit(support).T
    m = kl_signature_affinity(signatures(test, class_emb, temperature), signatures(support, class_emb, temperature))
    return cos, m


def _ranges_of(cos: Tensor, m: Tensor) -> TipXRanges:
    return TipXRanges(float(m.min()), float(m.max()), float(cos.min()), float(cos.max()))


def tipx_ranges(test: Tensor, support: Tensor, class_emb: Tensor, temperature: float = TIPX_TEMPERATURE) -> TipXRanges:
    """psi's ranges over these test rows; merge the ranges of every chunk of a streamed test set."""
    return _ranges_of(*_parts(test, support, class_emb, temperature))


def rescale(m: Tensor, ranges: TipXRanges) -> Tensor:
    """psi (SuS-X tipx.py `scale_`): M min-max normalised, then stretched onto the cosine range."""
    span = ranges.kl_max - ranges.kl_min
    y = (m - ranges.kl_min) / span if span > 0 else torch.zeros_like(m)
    return y * (ranges.cos_max - ranges.cos_min) + ranges.cos_min


def tipx_logits(
    test: Tensor,
    support: Tensor,
    support_labels: Tensor,
    class_emb: Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    temperature: float = TIPX_TEMPERATURE,
    ranges: TipXRanges | None = None,
) -> Tensor:
    """(N, C) TIP-X logits: 100 f W^T + alpha A L + gamma (-psi(M)) L.

    `ranges` fixes psi (computed over a whole test set with `tipx_ranges`); None takes them from these
    rows, as the reference does for the set it scores.
    """
    labels = _one_hot(support_labels, class_emb.shape[0])
    cos, m = _parts(test, support, class_emb, temperature)
    ranges = ranges or _ranges_of(cos, m)
    zs = clip_logits(test, class_emb)
    cache = torch.exp(-beta * (1.0 - cos)) @ labels
    kl_logits = -rescale(m, ranges) @ labels
    return zs + alpha * cache + gamma * kl_logits


@dataclass(frozen=True)
class Adapter:
    """One training-free adapter: the hyper-parameters its search sets, the order the reference loops
    over them (outer first; the first best wins ties), whether it uses TIP-X's text-side affinity
    (whose rescaling needs ranges over the whole scored set), and its logits."""

    searched: tuple[str, ...]
    loop_order: tuple[int, ...]
    uses_kl: bool
    logits: Callable[..., Tensor]  # (test, support, support_labels, class_emb, hparams, ranges) -> (N, C)


ADAPTERS: dict[str, Adapter] = {
    "tip-adapter": Adapter(
        ("alpha", "beta"),
        (1, 0, 2),
        False,  # Tip-Adapter utils.py: beta outer
        lambda f, sup, lab, w, hp, ranges: tip_adapter_logits(f, sup, lab, w, hp["alpha"], hp["beta"]),
    ),
    "tip-x": Adapter(
        ("alpha", "beta", "gamma"),
        (0, 1, 2),
        True,  # tipx.py: alpha, beta, gamma
        lambda f, sup, lab, w, hp, ranges: tipx_logits(
            f, sup, lab, w, hp["alpha"], hp["beta"], hp["gamma"], hp["temperature"], ranges
        ),
    ),
}


# ------------------------------------------------------------------------------------------ the search
def _first_best(acc: Tensor, order: tuple[int, ...]) -> tuple[int, ...]:
    """Index of the first maximum of `acc` when its axes are looped over in `order` (outer first),
    the references' strict `>` rule."""
    perm = acc.permute(*order).contiguous()
    flat = int(torch.argmax(perm.reshape(-1)))  # torch.argmax returns the first maximal index
    idx = np.unravel_index(flat, tuple(perm.shape))
    out = [0] * acc.ndim
    for axis, i in zip(order, idx):
        out[axis] = int(i)
    return tuple(out)


def _correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Correct predictions per leading grid cell of (..., V, C) logits."""
    return (logits.argmax(dim=-1) == labels).sum(dim=-1)


def search_hparams(
    val_feats: Tensor,
    val_labels: Tensor,
    support: Tensor,
    support_labels: Tensor,
    class_emb: Tensor,
    method: str,
    grid: dict[str, list[float]] | None = None,
    temperature: float = TIPX_TEMPERATURE,
) -> dict:
    """Grid search of alpha, beta (and gamma for TIP-X) by top-1 accuracy on labelled validation rows.

    Vectorised: per beta, every (alpha, gamma) cell is scored in one batched argmax. Returns the chosen
    values, the validation top-1 with them and of plain zero-shot, and the grid searched.
    """
    if method not in ADAPTERS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(ADAPTERS)})")
    adapter = ADAPTERS[method]
    grid = {k: [float(v) for v in vals] for k, vals in (grid or DEFAULT_GRIDS[method]).items()}
    need = adapter.searched
    missing = [k for k in need if not grid.get(k)]
    if missing:
        raise ValueError(f"grid for {method} needs non-empty {', '.join(missing)}")
    y = torch.as_tensor(val_labels).long()
    n_val = y.shape[0]
    if n_val == 0:
        raise ValueError("the validation split is empty")
    labels = _one_hot(support_labels, class_emb.shape[0])
    zs = clip_logits(val_feats, class_emb)
    alphas = torch.tensor(grid["alpha"])
    cos, m = _parts(val_feats, support, class_emb, temperature)
    if adapter.uses_kl:
        gammas = torch.tensor(grid["gamma"])
        kl_logits = -rescale(m, _ranges_of(cos, m)) @ labels
    else:
        gammas, kl_logits = torch.zeros(1), torch.zeros_like(zs)
    correct = torch.empty(len(alphas), len(grid["beta"]), len(gammas), dtype=torch.long)
    base = zs.unsqueeze(0) + gammas.view(-1, 1, 1) * kl_logits  # (G, V, C)
    for j, beta in enumerate(grid["beta"]):
        cache = torch.exp(-beta * (1.0 - cos)) @ labels  # (V, C)
        for i, alpha in enumerate(alphas):
            correct[i, j] = _correct(base + alpha * cache, y)
    i, j, k = _first_best(correct, adapter.loop_order)
    chosen = {"alpha": grid["alpha"][i], "beta": grid["beta"][j]}
    if adapter.uses_kl:
        chosen.update(gamma=grid["gamma"][k], temperature=temperature)
    edge = [
        name
        for name, pos in zip(("alpha", "beta", "gamma"), (i, j, k))
        if name in need and len(grid[name]) > 1 and pos in (0, len(grid[name]) - 1)
    ]
    return {
        "method": method,
        **chosen,
        "val_acc1": int(correct[i, j, k]) / n_val,
        "val_zero_shot_acc1": int(_correct(zs, y)) / n_val,
        "val_size": n_val,
        "grid": {name: [min(grid[name]), max(grid[name]), len(grid[name])] for name in need},
        "at_grid_edge": edge,
    }


# ----------------------------------------------------------------------- support / validation split
def support_val_split(
    labels: np.ndarray, num_classes: int, val_per_class: int, shots: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a labelled support set split into (support rows, validation rows), both ascending.

    Per class c (rows with label c, in row order), one permutation seeded by (seed, c): its first
    v_c rows are the validation rows, the next `shots` rows (all of the rest when shots = 0) the
    support. v_c = val_per_class, or half of the class's rows when val_per_class = 0, and always
    leaves at least one support row. The validation rows do not depend on `shots`, and the k-shot
    support is nested in every larger one (1-shot within 4-shot). Rows labelled -1 are left out.
    """
    labels = np.asarray(labels)
    if val_per_class < 0 or shots < 0:
        raise ValueError("val_per_class and shots must be >= 0")
    support, val = [], []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if rows.size == 0:
            continue
        perm = rows[np.random.default_rng([seed, c]).permutation(rows.size)]
        v = rows.size // 2 if val_per_class == 0 else min(val_per_class, rows.size - 1)
        val.append(perm[:v])
        rest = perm[v:]
        support.append(rest[:shots] if shots else rest)
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(support).astype(np.int64), cat(val).astype(np.int64)
