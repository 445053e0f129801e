"""The `[fit]` table: the sweep grid and where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from zoomshot.cache.settings import at_least, device_name, each, name_like, nonempty, setting, split_mix, unit_fraction


@dataclass
class FitCfg:
    """`pipeline fit`: the grid of runs (train data x encoders x variants x presets x fractions x epochs x
    seeds) and where it runs."""

    train: list[str] = setting(lambda: ["shapes:train"], nonempty, each(split_mix))  # "a:train+b:train" mixes
    encoders: list[str] = setting(list, each(name_like))  # encoders to fit ([] = all)
    variants: list[str] = setting(lambda: ["mse"], nonempty, each(name_like))  # `pipeline list variants`, or defined
    presets: list[str] = setting(lambda: ["tuned"], nonempty, each(name_like))  # the recipes of Zoom-shot variants
    preset_encoders: dict = field(default_factory=dict)  # preset -> the only encoders it runs on, e.g. paper = ["cnn"]
    fractions: list[float] = setting(lambda: [1.0], nonempty, each(unit_fraction))  # shares of the train rows
    epochs: list[int] = setting(lambda: [20], nonempty, each(at_least(1)))  # of the variants trained by epochs
    seeds: list[int] = setting(lambda: [0], nonempty)  # each seed is a run of its own
    device: str = setting("cpu", device_name)  # where each fit trains
    scheduler: str = ""  # "" threads on this machine; "tcp://host:port" a dask cluster
    workers: int = setting(2, at_least(1))  # threads of the local scheduler
    threads: int = setting(1, at_least(1))  # torch intra-op threads of each fit (CPU): in its identity
    definitions: dict = field(default_factory=dict)  # variants of your own: [fit.definitions.NAME] method + settings
    trainer: dict = field(default_factory=dict)  # settings for every Zoom-shot variant (`pipeline list methods`)
