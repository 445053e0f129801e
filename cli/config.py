"""pipeline.toml: one table per stage, each checked against the typed settings its stage defines
(`cache/settings.py` for the shared tables, `extract|fit|evaluate/settings.py` for the stages').

Everything is checked when the file is read, before any work: an unknown key (with the closest valid
one), a wrong type, a value out of range, a file that must exist, a dataset option its kind does not
know, a split of an unknown dataset. Each is one line naming the key. Command-line options override
the file through click's `default_map` (see `cli/main.py`) and are checked the same way.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.layout import OPENAI_TEMPLATES
from zoomshot.cache.settings import ClipCfg, DatasetCfg, EncoderCfg, PathsCfg, Project, build, parse_ref
from zoomshot.evaluate.settings import EvaluateCfg, ReportCfg
from zoomshot.extract import shipped
from zoomshot.extract.prompts import load_templates
from zoomshot.extract.settings import DATASET_KINDS, ExtractCfg
from zoomshot.fit.settings import FitCfg

DEFAULT_FILE = "pipeline.toml"


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

    @property
    def project(self) -> Project:
        """The shared part every stage receives: what names the cache files, runs and results."""
        return Project(self.paths, self.clip, self.encoders, self.datasets, self.extract)


def _resolve_files(cfg: Config) -> None:
    """Shipped `assets:` names resolved; the weights, templates and prompt files named must exist."""
    for where, model in [("clip", cfg.clip)] + [(f"encoders[{i}]", e) for i, e in enumerate(cfg.encoders)]:
        model.location = shipped.resolve(model.pretrained)
        if (missing := shipped.missing_weights(model.location)) is not None:
            raise PipelineError(
                f"config key '{where}.pretrained': weights not found at {missing} (a tag, an "
                f'existing file, local-dir:FOLDER or assets:NAME; "" = random weights)'
            )
    clip = cfg.clip
    clip.templates_file = shipped.resolve(clip.templates_file) or str(shipped.TEMPLATES)
    clip.classfree_prompts = shipped.resolve(clip.classfree_prompts) or str(
        shipped.default_classfree_prompts([d.kind for d in cfg.datasets])
    )
    files = [("classfree_prompts", clip.classfree_prompts)]
    if clip.templates != OPENAI_TEMPLATES:
        files.append(("templates_file", clip.templates_file))
    for key, path in files:
        if not Path(path).is_file():
            raise PipelineError(f"config key 'clip.{key}' names no file: {path}")
    if clip.templates != OPENAI_TEMPLATES:
        load_templates(clip.templates, Path(clip.templates_file))  # an empty or broken entry: before any work


def _check_datasets(cfg: Config) -> None:
    """Each dataset's kind is known and its options are that kind's (defaults filled in)."""
    for i, d in enumerate(cfg.datasets):
        if d.kind not in DATASET_KINDS:
            close = difflib.get_close_matches(d.kind, list(DATASET_KINDS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(DATASET_KINDS)})"
            raise PipelineError(f"config key 'datasets[{i}].kind': unknown dataset kind {d.kind!r}{hint}")
        d.options = asdict(build(DATASET_KINDS[d.kind], d.options, f"datasets[{i}].options"))


def _check_names(cfg: Config, data: dict) -> None:
    """Unique names; every split reference the file gives names a known dataset (a default that names
    the world's `shapes` is checked when its stage runs)."""
    project = cfg.project
    for what, names in (
        ("encoder", [cfg.clip.name] + [e.name for e in cfg.encoders]),
        ("dataset", [d.name for d in cfg.datasets]),
    ):
        if len(set(names)) != len(names):
            raise PipelineError(f"{what} names must be unique, got {names}")
    given = {(table, key) for table, keys in data.items() if isinstance(keys, dict) for key in keys}
    refs = (
        [("extract.splits", r) for r in cfg.extract.splits]
        + [("extract.captions", r) for r in cfg.extract.captions]
        + [("fit.train", part) for r in cfg.fit.train for part in r.split("+")]
        + [("evaluate.test", r) for r in cfg.evaluate.test]
        + [("evaluate.support", r) for r in cfg.evaluate.supports]
    )
    for key, ref in refs:
        if tuple(key.split(".")) not in given:
            continue
        try:
            project.dataset(parse_ref(ref)[0])
        except PipelineError as e:
            raise PipelineError(f"config key '{key}': {e}") from None
    extracted = set(cfg.extract.splits) | set(cfg.extract.captions)
    if stray := sorted(set(cfg.extract.split_fractions) - extracted):
        raise PipelineError(
            f"config key 'extract.split_fractions' names {', '.join(stray)}, which extract.splits does "
            f"not extract (it has: {', '.join(cfg.extract.splits) or 'none'}): fix the name"
        )
    for name in cfg.fit.encoders:
        try:
            project.encoder(name)
        except PipelineError as e:
            raise PipelineError(f"config key 'fit.encoders': {e}") from None


def from_dict(data: dict) -> Config:
    cfg = build(Config, data)
    _resolve_files(cfg)
    _check_datasets(cfg)
    _check_names(cfg, data)
    return cfg


def read_toml(path: Path | None) -> dict:
    """A TOML file as a dict (default ./pipeline.toml); a missing or broken file is one line."""
    if path is None:
        path = Path(DEFAULT_FILE)
        if not path.exists():
            raise PipelineError(
                f"no {DEFAULT_FILE} in {Path.cwd()}: pass --config PATH, or write one (docs/config.md lists "
                f"every key; configs/my-data.toml is a worked example; the repository's pipeline.toml runs "
                f"the default world)"
            )
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"config file {path} not found: pass --config PATH to an existing file")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{path} is not valid TOML: {e}") from None
    if "clip" not in data:
        raise PipelineError(
            f"{path} has no [clip] table: name the CLIP model and its weights there (e.g. "
            f'model = "ViT-B-16", pretrained = "openai"; see configs/my-data.toml)'
        )
    return data


def load(path: Path | None) -> Config:
    """Read and check a config file (default ./pipeline.toml)."""
    return from_dict(read_toml(path))


def with_overrides(section: Any, values: dict, table: str) -> Any:
    """A copy of a stage table with command-line values, checked like file values."""
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}
    return build(type(section), {**asdict(section), **given}, table)


def section_defaults(section: Any) -> dict:
    """Scalars and lists of a stage table, for click's `default_map`."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in asdict(section).items() if not isinstance(v, dict)}
