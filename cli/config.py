"""pipeline.toml: one table per stage, validated against typed dataclasses.

An unknown key or a wrong type is one clear line naming the key (and the closest valid one).
Command-line options override the file through click's `default_map` (see `cli/main.py`).
"""
from __future__ import annotations

import difflib
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from zoomshot.cache import keys
from zoomshot.cache.errors import PipelineError

IMPORTED = "imported"   # model/kind of features brought in by `pipeline cache import`


@dataclass
class PathsCfg:
    cache_dir: str = "zoomshot-out/cache"
    runs_dir: str = "zoomshot-out/runs"
    results_dir: str = "zoomshot-out/results"
    report_dir: str = "zoomshot-out/report"


@dataclass
class ClipCfg:
    name: str = "clip"
    model: str = "zoomshot-tiny-clip"
    pretrained: str = ""             # "" random weights; a tag, a local file, `local-dir:PATH` or `assets:FILE`
    templates: str = "shapes"        # a key of the templates file, or "openai-imagenet"
    templates_file: str = ""         # CLIP_benchmark-style JSON; "" = the shipped world templates
    classfree_prompts: str = ""      # one prompt a line; "" = the shipped default set
    batch_size: int = 256            # prompts per text-encoder batch
    micro_batch: int = 0             # images per forward pass (0 = the whole extraction batch)

    def identity(self) -> dict:
        family = IMPORTED if self.model == IMPORTED else "open_clip"
        return {"family": family, "name": self.name, "model": self.model, "pretrained": self.pretrained}


@dataclass
class EncoderCfg:
    name: str = ""
    model: str = ""
    pretrained: str = ""             # "" random weights; a timm tag, a local file or `assets:FILE`
    options: dict = field(default_factory=dict)   # extra timm.create_model keyword arguments
    micro_batch: int = 0             # images per forward pass (0 = the whole extraction batch)

    def identity(self) -> dict:
        family = IMPORTED if self.model == IMPORTED else "timm"
        return {"family": family, "name": self.name, "model": self.model,
                "pretrained": self.pretrained, "options": self.options}


@dataclass
class DatasetCfg:
    name: str = ""
    kind: str = "shapes"             # a key of the dataset registry (extract/datasets.py)
    root: str = ""
    options: dict = field(default_factory=dict)   # kind-specific, e.g. split sizes of the world

    def identity(self) -> dict:
        options = {k: v for k, v in self.options.items() if k != "download"}   # changes no number
        return {"name": self.name, "kind": self.kind, "root": self.root, "options": options}


@dataclass
class ExtractCfg:
    splits: list[str] = field(default_factory=lambda: ["shapes:train", "shapes:test"])
    fraction: float = 1.0            # nested subset of each split that is extracted
    split_fractions: dict = field(default_factory=dict)   # per split, e.g. {"imagenet:train" = 0.2}
    subset_seed: int = 0
    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    on_bad_image: typing.Literal["skip", "fail"] = "skip"
    scheduler: str = ""              # dask.distributed address: shard the splits over its workers
    shards: int = 0                  # shards per split on a scheduler (0 = one per worker)


    def fraction_of(self, ref: str) -> float:
        value = self.split_fractions.get(ref, self.fraction)
        if not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise PipelineError(f"config key 'extract.split_fractions.{ref}' must be a number in (0, 1]")
        return float(value)


@dataclass
class FitCfg:
    train: list[str] = field(default_factory=lambda: ["shapes:train"])   # "a:train+b:train" mixes
    encoders: list[str] = field(default_factory=list)                   # [] = every encoder
    variants: list[str] = field(default_factory=lambda: ["mse"])
    fractions: list[float] = field(default_factory=lambda: [1.0])
    epochs: list[int] = field(default_factory=lambda: [20])
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    scheduler: str = ""              # "" threads on this machine; "tcp://host:port" a dask cluster
    workers: int = 2                 # threads of the local scheduler
    definitions: dict = field(default_factory=dict)   # [fit.definitions.NAME] method + settings
    trainer: dict = field(default_factory=dict)       # settings for every Zoom-shot variant (batch_size, lr...)


@dataclass
class EvaluateCfg:
    test: list[str] = field(default_factory=lambda: ["shapes:test"])
    runs: list[str] = field(default_factory=list)                       # [] = every finished run
    chunk_rows: int = 65536
    per_class: bool = False          # also write each class's accuracy (metrics.per_class_acc)
    # training-free adaptation with a labelled support set (evaluate/adaptation.py)
    adapters: list[typing.Literal["tip-adapter", "tip-x"]] = field(default_factory=list)   # [] = off
    support: str = ""                # DATASET:SPLIT of the cached support set, e.g. "shapes-sus:train"
    shots: int = 0                   # support images per class, seeded and nested (0 = all)
    val_per_class: int = 0           # rows per class held out of the support for the search (0 = half)
    support_seed: int = 0            # seed of the support / validation split and of the k-shot draw
    adapter_grid: typing.Literal["wide", "reference"] = "wide"   # hyper-parameter grid of the search


@dataclass
class ReportCfg:
    encoders: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)


@dataclass
class Config:
    paths: PathsCfg = field(default_factory=PathsCfg)
    clip: ClipCfg = field(default_factory=ClipCfg)
    encoders: list[EncoderCfg] = field(default_factory=list)
    datasets: list[DatasetCfg] = field(default_factory=list)
    extract: ExtractCfg = field(default_factory=ExtractCfg)
    fit: FitCfg = field(default_factory=FitCfg)
    evaluate: EvaluateCfg = field(default_factory=EvaluateCfg)
    report: ReportCfg = field(default_factory=ReportCfg)

    def path(self, name: str) -> Path:
        """Paths are used as given (relative to the working directory), made absolute so that dask
        workers with another working directory find the same files."""
        return Path(getattr(self.paths, name)).absolute()

    def dataset(self, name: str) -> DatasetCfg:
        for d in self.datasets:
            if d.name == name:
                return d
        raise PipelineError(f"unknown dataset {name!r}: add a [[datasets]] table with name = {name!r} "
                            f"(known: {', '.join(d.name for d in self.datasets) or 'none'})")

    def encoder(self, name: str) -> EncoderCfg | ClipCfg:
        if name == self.clip.name:
            return self.clip
        for e in self.encoders:
            if e.name == name:
                return e
        raise PipelineError(f"unknown encoder {name!r} (known: "
                            f"{', '.join([self.clip.name] + [e.name for e in self.encoders])})")


def split_ref(ref: str) -> tuple[str, str]:
    """'shapes:train' -> ('shapes', 'train')."""
    name, sep, split = ref.partition(":")
    if not sep or not name or not split:
        raise PipelineError(f"bad split reference {ref!r}: write DATASET:SPLIT, e.g. 'shapes:train'")
    return name, split


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise PipelineError(f"config key '{where}' must be one of "
                                f"{', '.join(map(repr, typing.get_args(tp)))}, got {value!r}")
        return value
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise PipelineError(f"config key '{where}' must be a table, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise PipelineError(f"config key '{where}' must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = dict if tp is dict else tp
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise PipelineError(f"config key '{where}' must be {_type_name(tp)}, "
                            f"got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"
            raise PipelineError(f"unknown config key '{where}'{hint}")
        kwargs[key] = _check(value, hints[key], where)
    return cls(**kwargs)


def from_dict(data: dict) -> Config:
    cfg = _build(Config, data)
    for what, names in (("encoder", [cfg.clip.name] + [e.name for e in cfg.encoders]),
                        ("dataset", [d.name for d in cfg.datasets])):
        if len(set(names)) != len(names) or "" in names:
            raise PipelineError(f"{what} names must be non-empty and unique, got {names}")
    return cfg


def load(path: Path | None) -> Config:
    """Read a TOML file; a missing default file means all defaults, a missing given file is an error."""
    if path is None:
        path = Path("pipeline.toml")
        if not path.exists():
            return from_dict({})
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"config file {path} not found: pass --config PATH to an existing file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{path} is not valid TOML: {e}") from None
    return from_dict(data)


def with_overrides(section: Any, values: dict) -> Any:
    """A copy of a stage table with command-line values, re-validated like file values."""
    name = type(section).__name__
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}
    merged = {**asdict(section), **given}
    return _build(type(section), merged, name.removesuffix("Cfg").lower())


def section_defaults(section: Any) -> dict:
    """Scalars and lists of a stage table, for click's `default_map`."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in asdict(section).items()
            if not isinstance(v, dict)}



# ---- where each stage's files live: computed from the config alone, so `fit` and `evaluate` find
# ---- the cache without building a model or opening a dataset.

def templates_file(cfg: Config) -> Path:
    return Path(cfg.clip.templates_file) if cfg.clip.templates_file else keys.assets_dir() / "world_templates.json"


def classfree_file(cfg: Config) -> Path:
    return Path(cfg.clip.classfree_prompts) if cfg.clip.classfree_prompts else \
        keys.assets_dir() / "classfree_prompts.txt"


def _fingerprint(path: Path, what: str) -> str:
    if not path.is_file():
        raise PipelineError(f"{what} file {path} not found: fix it in the [clip] table of the config")
    return keys.file_checksum(path)


def _is_imported(spec: dict) -> bool:
    return spec.get("model") == IMPORTED or spec.get("kind") == IMPORTED


def feature_path(cfg: Config, encoder: str, ref: str) -> Path:
    """The cache file of `encoder` on `ref` ('dataset:split') under the current extraction settings.

    Imported features are whole splits: their key ignores the extraction fraction and seed.
    """
    name, split = split_ref(ref)
    enc, ds = cfg.encoder(encoder).identity(), cfg.dataset(name).identity()
    imported = _is_imported(enc) or _is_imported(ds)
    fraction, seed = (1.0, 0) if imported else (cfg.extract.fraction_of(ref), cfg.extract.subset_seed)
    return keys.feature_path(cfg.path("cache_dir"), enc, ds, split, fraction, seed)


def class_prompt_spec(cfg: Config, dataset: str) -> dict:
    ds = cfg.dataset(dataset).identity()
    if cfg.clip.templates == "openai-imagenet":
        return {"dataset": ds, "templates": "openai-imagenet"}
    return {"dataset": ds, "templates": cfg.clip.templates,
            "templates_file": _fingerprint(templates_file(cfg), "templates")}


def class_text_path(cfg: Config, dataset: str) -> Path:
    return keys.text_path(cfg.path("cache_dir"), cfg.clip.identity(), f"{dataset}-classes",
                          class_prompt_spec(cfg, dataset))


def classfree_text_path(cfg: Config) -> Path:
    spec = {"classfree": _fingerprint(classfree_file(cfg), "class-free prompt")}
    return keys.text_path(cfg.path("cache_dir"), cfg.clip.identity(), "classfree", spec)
