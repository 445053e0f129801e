"""The `[evaluate]` and `[report]` tables."""
from __future__ import annotations

from dataclasses import dataclass

from zoomshot.cache.settings import at_least, each, name_like, setting, split_ref

from .adapters import ADAPTERS, GRIDS
from .report import METRICS
from .tables import MAIN_PIVOT, Pivot


def adapter_name(v: str) -> str | None:
    return None if v in ADAPTERS else f"must be one of {', '.join(map(repr, ADAPTERS))}, got {v!r}"


def grid_name(v: str) -> str | None:
    return None if v in GRIDS else f"must be one of {', '.join(map(repr, GRIDS))}, got {v!r}"


def support_refs(v: str | list) -> str | None:
    """One DATASET:SPLIT, or a list of them; "" = none."""
    refs = [v] if isinstance(v, str) else v
    if not all(isinstance(r, str) for r in refs):
        return f"must be DATASET:SPLIT or a list of them, got {v!r}"
    return next((p for r in refs if r and (p := split_ref(r))), None)


@dataclass
class EvaluateCfg:
    test: list[str] = setting(lambda: ["shapes:test"], each(split_ref))
    runs: list[str] = setting(list, each(name_like))                   # [] = every finished run
    chunk_rows: int = setting(65536, at_least(1))
    per_class: bool = False          # also write each class's accuracy (metrics.per_class_acc)
    # training-free adaptation with a labelled support set (evaluate/adaptation.py)
    adapters: list[str] = setting(list, each(adapter_name))            # [] = off
    # DATASET:SPLIT of the cached support set, e.g. "shapes-sus:train", or a list of them: each its own rows
    support: str | list = setting("", support_refs)
    shots: int = setting(0, at_least(0))           # support images per class, seeded and nested (0 = all)
    val_per_class: int = setting(0, at_least(0))   # rows per class held out of the support for the search (0 = half)
    support_seed: int = 0            # seed of the support / validation split and of the k-shot draw
    adapter_grid: str = setting("wide", grid_name)  # hyper-parameter grid of the search
    retrieval: bool = False          # also text<->image Recall@1/5/10 against the test split's cached captions

    @property
    def supports(self) -> list[str]:
        """The support sets, as a list (`support` may be one)."""
        return [r for r in ([self.support] if isinstance(self.support, str) else self.support) if r]


def pivot_text(v: str) -> str | None:
    try:
        Pivot.parse(v)
    except ValueError as e:
        return str(e)
    return None


def metric_name(v: str) -> str | None:
    return None if v in METRICS else f"must be one of {', '.join(METRICS)}, got {v!r}"


@dataclass
class ReportCfg:
    encoders: list[str] = setting(list, each(name_like))
    datasets: list[str] = setting(list, each(name_like))
    methods: list[str] = setting(list, each(name_like))
    # the main table (evaluate/tables.py): its metric, ROWS:COLUMNS, and the slice of what is not pivoted
    metric: str = setting("acc1", metric_name)
    pivot: str = setting(MAIN_PIVOT, pivot_text)
    fraction: float = setting(0.0, at_least(0))    # 0 = the largest fraction of the results
    epochs: int = setting(0, at_least(0))          # 0 = the most epochs
    runs: list[str] = setting(list, each(name_like))   # runs whose loss terms to draw ([] = the slice's first seeds)

