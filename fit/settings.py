"""The `[fit]` table: the sweep grid and where it runs."""
from __future__ import annotations

from dataclasses import dataclass, field

from zoomshot.cache.settings import (at_least, device_name, each, name_like, nonempty, setting, split_mix,
                                     unit_fraction)


@dataclass
class FitCfg:
    train: list[str] = setting(lambda: ["shapes:train"], nonempty, each(split_mix))   # "a:train+b:train" mixes
    encoders: list[str] = setting(list, each(name_like))                             # [] = every encoder
    variants: list[str] = setting(lambda: ["mse"], nonempty, each(name_like))
    presets: list[str] = setting(lambda: ["tuned"], nonempty, each(name_like))   # the recipes of Zoom-shot variants
    preset_encoders: dict = field(default_factory=dict)   # preset -> the only encoders it runs on, e.g. paper = ["cnn"]
    fractions: list[float] = setting(lambda: [1.0], nonempty, each(unit_fraction))
    epochs: list[int] = setting(lambda: [20], nonempty, each(at_least(1)))
    seeds: list[int] = setting(lambda: [0], nonempty)
    device: str = setting("cpu", device_name)
    scheduler: str = ""              # "" threads on this machine; "tcp://host:port" a dask cluster
    workers: int = setting(2, at_least(1))             # threads of the local scheduler
    threads: int = setting(1, at_least(1))             # torch intra-op threads of each fit (CPU); see fit_method
    definitions: dict = field(default_factory=dict)   # [fit.definitions.NAME] method + settings
    trainer: dict = field(default_factory=dict)       # settings for every Zoom-shot variant (batch_size, lr...)
