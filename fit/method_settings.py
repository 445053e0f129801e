"""Every fitting method's settings, revision and named variants, without torch: the config checks,
`pipeline list` and `pipeline runs` read them without loading the code that fits (fit/methods.py binds
each to its fit).

The defaults of a closed-form baseline live here only; fit/baselines.py's signatures read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoomshot.cache.settings import at_least, positive, setting

from .presets import DEFAULT_PRESET, PRESETS

#: the trainer's revision, recorded in every Zoom-shot run.json: bump it when a change moves its numbers at
#: the same settings (a loss, the parametrisation), so that finished runs of the old maths are fitted again
REVISION = 1
#: the baselines' revisions, the same way (bump one when its maths change; finished runs are then fitted again)
REVISIONS = {"linear-aligner": 1, "lstsq": 1, "procrustes": 1}

INITS = ("ridge", "random")  # where the maps start: the reconstruction's ridge closed forms, or seeded noise
OPTIMIZERS = ("adam", "adamw", "sgd")  # fit/trainer.py builds each
SCHEDULES = ("cosine", "constant")  # learning-rate schedules over all optimizer steps (fit/trainer.py)
KD_VARIANTS = ("lm", "ht-ce", "kl")  # the PG-KD terms (fit/losses.py)


@dataclass
class TrainConfig:
    """Settings of one Zoom-shot fit; the defaults are the `tuned` preset (fit/presets.py, docs/method.md).

    Adam, lr 3e-2 with cosine decay to 0 over all steps, 20 epochs of batches of at most 2,048 rows and at
    least 50 steps (`batch_for`), in whitened coordinates, with a ridge on h chosen by GCV, starting from
    the ridge closed forms, every term on one scale (fit/losses.py), w_cyc = w_cyc_text = 1 and w_kd = 3
    (benchmarks/joint_weights.py). From a random start the MSE variant reaches the closed-form optimum at
    any number of rows (tests/test_fit_convergence.py); from the ridge start it is there at step 0, so a
    claim about training at these defaults measures the start too. w_cyc weighs the two image cycle terms
    and w_cyc_text the prompt-set cycle term (w_cyc == w_cyc_text is the paper's single L_cyc). lr = 0
    freezes the maps: the tests' control that training, not the start, passes them.
    """

    epochs: int = 20  # passes over the training rows (the paper's meaning)
    batch_size: int = 2048  # the largest batch; fewer rows take smaller batches (steps_per_epoch)
    steps_per_epoch: int = 50  # the fewest optimizer steps of an epoch
    ridge: float = 1e-6  # ridge on h's reconstruction, relative to the mean input eigenvalue ...
    ridge_by_gcv: bool = True  # ... or chosen from the training pairs by GCV (fit/ridge.py)
    init: str = "ridge"  # start h and h_inv at their ridge closed forms, or "random"
    whiten: bool = True  # train in whitened input coordinates (WhitenedLinear), or on the raw weights
    scale_terms: bool = True  # each loss term over its trivial guess (fit/losses.py), or in raw units
    lr: float = 3e-2
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    w_mse: float = 1.0
    w_cyc: float = 1.0  # the weights follow benchmarks/joint_weights.py (docs/method.md)
    w_cyc_text: float = 1.0
    w_kd: float = 3.0
    kd_variant: str = "lm"
    kd_temperature: float = 4.0  # softmax temperature of the `kl` variant
    tau: float = 100.0
    target_variance: float = 4.5
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    preset: str = DEFAULT_PRESET  # the recipe these values came from (fit/presets.py): part of the run's name

    def __post_init__(self) -> None:
        choices = {
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "kd_variant": KD_VARIANTS,
            "init": INITS,
            "preset": PRESETS,
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} = {getattr(self, name)!r} is not one of {sorted(valid)}")
        for name in ("epochs", "batch_size", "steps_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        for name in ("tau", "target_variance", "kd_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        weights = {name: getattr(self, name) for name in ("w_mse", "w_cyc", "w_cyc_text", "w_kd")}
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"loss weights must be >= 0 and not all 0, got {weights}")


@dataclass
class LstsqSettings:
    """`lstsq`: closed-form ridge regression each way (fit/baselines.py `lstsq_maps`)."""

    ridge: float = setting(1e-6, at_least(0))  # relative to the mean input eigenvalue, when not by GCV
    ridge_by_gcv: bool = True  # choose each map's ridge by GCV from the training pairs
    target_variance: float = setting(4.5, positive)  # both spaces scaled to this variance per entry


@dataclass
class ProcrustesSettings:
    """`procrustes`: scaled orthogonal Procrustes (fit/baselines.py `procrustes_maps`)."""

    target_variance: float = setting(4.5, positive)


@dataclass
class LinearAlignerSettings:
    """`linear-aligner`: Text-to-Concept's recipe (fit/baselines.py `linear_aligner_maps`)."""

    fixed: bool = False  # undo their scaling exactly (their export scales the bias by c1)
    epochs: int = setting(5, at_least(1))
    batch_size: int = setting(100, at_least(1))
    lr: float = setting(0.01, positive)
    momentum: float = 0.9
    weight_decay: float = setting(5e-4, at_least(0))
    t_max: int = setting(200, at_least(1))  # CosineAnnealingLR's period, stepped once per epoch
    target_variance: float = setting(4.5, positive)


# Named variants that need no table in the config; `[fit.definitions.NAME]` adds or overrides.
# The loss sets' weights are the trainer's defaults (TrainConfig, from the weight study).
BUILTIN_VARIANTS: dict[str, dict] = {
    "mse": {"method": "zoomshot", "w_cyc": 0.0, "w_cyc_text": 0.0, "w_kd": 0.0},
    "mse+cyc": {"method": "zoomshot", "w_kd": 0.0},
    "mse+cyc+kd-lm": {"method": "zoomshot", "kd_variant": "lm"},
    "mse+cyc+kd-htce": {"method": "zoomshot", "kd_variant": "ht-ce"},
    "mse+cyc+kd-kl": {"method": "zoomshot", "kd_variant": "kl"},
    "linear-aligner": {"method": "linear-aligner"},
    "linear-aligner-fixed": {"method": "linear-aligner", "fixed": True},
    "lstsq": {"method": "lstsq"},
    "procrustes": {"method": "procrustes"},
}
