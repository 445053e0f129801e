"""The `[evaluate]` and `[report]` tables."""

from __future__ import annotations

from dataclasses import dataclass

from zoomshot.cache.settings import allows, at_least, each, name_like, setting, split_ref

from .grids import ADAPTER_NAMES, GRIDS
from .report import METRICS
from .tables import FIELDS, MAIN_PIVOT, Pivot


@allows(f"one of {', '.join(ADAPTER_NAMES)} (`pipeline list adapters`)")
def adapter_name(v: str) -> str | None:
    return None if v in ADAPTER_NAMES else f"must be one of {', '.join(map(repr, ADAPTER_NAMES))}, got {v!r}"


@allows(f"one of {', '.join(GRIDS)} (evaluate/grids.py)")
def grid_name(v: str) -> str | None:
    return None if v in GRIDS else f"must be one of {', '.join(map(repr, GRIDS))}, got {v!r}"


@allows("DATASET:SPLIT, a list of them, or empty")
def support_refs(v: str | list) -> str | None:
    """One DATASET:SPLIT, or a list of them; "" = none."""
    refs = [v] if isinstance(v, str) else v
    if not all(isinstance(r, str) for r in refs):
        return f"must be DATASET:SPLIT or a list of them, got {v!r}"
    return next((p for r in refs if r and (p := split_ref(r))), None)


@dataclass
class EvaluateCfg:
    """`pipeline evaluate`: the test splits every run (and CLIP) is scored on, and the training-free adapters."""

    test: list[str] = setting(lambda: ["shapes:test"], each(split_ref))  # the test splits
    runs: list[str] = setting(list, each(name_like))  # runs to score ([] = the runs of the config's [fit] grid)
    chunk_rows: int = setting(65536, at_least(1))  # test rows read and scored at once (bounds the memory)
    all_runs: bool = False  # score every run folder, also those the config's grid no longer names
    per_class: bool = False  # also write each class's accuracy (metrics.per_class_acc)
    # training-free adaptation with a labelled support set (evaluate/adaptation.py)
    adapters: list[str] = setting(list, each(adapter_name))  # adapters to run with the support sets ([] = off)
    support: str | list = setting("", support_refs)  # cached support set(s) DATASET:SPLIT: each gives its own rows
    shots: int = setting(0, at_least(0))  # support images per class, seeded and nested (0 = all)
    val_per_class: int = setting(0, at_least(0))  # rows per class held out of the support for the search (0 = half)
    support_seed: int = 0  # seed of the support / validation split and of the k-shot draw
    adapter_grid: str = setting("wide", grid_name)  # hyper-parameter grid of the search
    retrieval: bool = False  # also text<->image Recall@1/5/10 against the test split's cached captions

    @property
    def supports(self) -> list[str]:
        """The support sets, as a list (`support` may be one)."""
        return [r for r in ([self.support] if isinstance(self.support, str) else self.support) if r]


@allows(f"ROWS:COLUMNS, each a comma-separated list of fields among {', '.join(FIELDS)}")
def pivot_text(v: str) -> str | None:
    try:
        Pivot.parse(v)
    except ValueError as e:
        return str(e)
    return None


@allows("a metric (`pipeline list metrics`)")
def metric_name(v: str) -> str | None:
    return None if v in METRICS else f"must be one of {', '.join(METRICS)}, got {v!r}"


@dataclass
class ReportCfg:
    """`pipeline report`: which results go into the tables and figures, and the main table's layout."""

    encoders: list[str] = setting(list, each(name_like))  # only these encoders ([] = all)
    datasets: list[str] = setting(list, each(name_like))  # only these test datasets ([] = all)
    methods: list[str] = setting(list, each(name_like))  # only these methods or variants ([] = all)
    # the main table (evaluate/tables.py): its metric, ROWS:COLUMNS, and the slice of what is not pivoted
    metric: str = setting("acc1", metric_name)  # the main table's metric (acc1 adds a column per class group)
    pivot: str = setting(MAIN_PIVOT, pivot_text)  # the main table's ROWS:COLUMNS
    fraction: float = setting(0.0, at_least(0))  # the fraction shown where not pivoted (0 = the largest)
    epochs: int = setting(0, at_least(0))  # the epochs shown where not pivoted (0 = the most)
    runs: list[str] = setting(list, each(name_like))  # runs whose loss terms to draw ([] = the slice's first seeds)
    all_runs: bool = False  # also results of runs outside the config's grid, labelled `[old run NAME]`
