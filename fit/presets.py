"""The two named recipes of the Zoom-shot trainer (docs/method.md says where each value comes from).

A preset is a set of `TrainConfig` values under everything a config gives: `tuned` is the trainer's own
defaults (the recipe this project measured best), `paper` undoes each of its departures from the paper
(arXiv 2401.11633) and fills what the paper leaves unsaid with stated assumptions. A variant's table and
`[fit] trainer` still override a preset, key by key.
"""

from __future__ import annotations

DEFAULT_PRESET = "tuned"
PRESETS: dict[str, dict] = {
    "tuned": {},
    "paper": {
        "init": "random",  # the paper trains the maps from a random start
        "ridge": 0.0,  # no ridge: the paper's L_mse is plain
        "ridge_by_gcv": False,
        "whiten": False,  # Adam on the raw weights of h and h_inv
        "scale_terms": False,  # each term in its raw units (mean per element, logits at tau = 100)
        "w_cyc": 1.0,  # equal weights: L = L_mse + L_cyc + L_pgkd
        "w_cyc_text": 1.0,
        "w_kd": 1.0,
        "steps_per_epoch": 1,  # no batch floor: an epoch is ceil(rows / batch) steps
        "batch_size": 256,  # assumed (not stated in what we could retrieve)
        "lr": 1e-3,  # assumed: Adam's default learning rate
        "schedule": "constant",  # assumed: no schedule is described
    },
}


def variant_label(name: str, preset: str) -> str:
    """A variant's name in tables, figures and `pipeline fit` lines: the preset in brackets unless it is
    the default one (`mse+cyc+kd-lm (paper)`)."""
    return name if preset == DEFAULT_PRESET else f"{name} ({preset})"
