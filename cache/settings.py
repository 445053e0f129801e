"""The settings every stage shares, because they name what is cached: paths, the CLIP, the encoders,
the datasets and the extracted subsets; and the one validating builder that turns a table of
pipeline.toml into a typed dataclass.

Each stage defines its own table beside it (`extract/settings.py`, `fit/settings.py`,
`evaluate/settings.py`) with the same builder. A bad value is one line naming the key: an unknown
key (with the closest valid one), a wrong type, or a value out of range (`checks` in a field's metadata).
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from . import keys, records
from .errors import PipelineError
from .records import DataRecord

IMPORTED = "imported"  # model / kind of data brought in by `pipeline cache import`

# ---- value checks: each returns a problem ("must be ...") or None --------------------------------

Check = Callable[[Any], "str | None"]


def allows(text: str) -> Callable[[Check], Check]:
    """Marks a check with what it accepts, in words (`check.allowed`): the configuration reference
    (docs/config.md, scripts/make_config_reference.py) lists it beside the key."""

    def mark(check: Check) -> Check:
        check.allowed = text
        return check

    return mark


def at_least(lo: float) -> Check:
    return allows(f">= {lo}")(lambda v: None if v >= lo else f"must be >= {lo}, got {v!r}")


@allows("> 0")
def positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


@allows("a fraction in (0, 1]")
def unit_fraction(v: float) -> str | None:
    return None if 0 < v <= 1 else f"must be a fraction in (0, 1], got {v!r}"


@allows("a number in (0, 1]")
def number_fraction(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"must be a number in (0, 1], got {v!r}"
    return unit_fraction(v)


@allows("a name of letters, digits and . _ + -, not starting with . or -")
def name_like(v: str) -> str | None:
    if keys.NAME.fullmatch(v):
        return None
    return (
        f"must be a name of letters, digits and . _ + - (it becomes part of file names), "
        f"not starting with . or -, got {v!r}"
    )


@allows("DATASET:SPLIT")
def split_ref(v: str) -> str | None:
    """'DATASET:SPLIT', each part a name; a mix of several joined by '+' where `mix` allows it."""
    name, sep, split = v.partition(":")
    if not sep or name_like(name) or not split or name_like(split):
        return f"must be DATASET:SPLIT (e.g. 'shapes:train'), got {v!r}"
    return None


@allows("DATASET:SPLIT, or A:SPLIT+B:SPLIT (a mix)")
def split_mix(v: str) -> str | None:
    return next(
        (f"must be DATASET:SPLIT or A:SPLIT+B:SPLIT, got {v!r}" for part in v.split("+") if split_ref(part)), None
    )


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@allows("auto, cpu, cuda, cuda:N or mps")
def device_name(v: str) -> str | None:
    return None if DEVICE.fullmatch(v) else f"must be auto, cpu, cuda, cuda:N or mps, got {v!r}"


@allows("not empty")
def nonempty(v: list) -> str | None:
    return None if v else "must not be empty"


def each(check: Check) -> Check:
    return allows(f"each item {check.allowed}")(
        lambda v: next((f"item {i}: {p}" for i, x in enumerate(v) if (p := check(x))), None)
    )


def values(check: Check) -> Check:
    return allows(f"each value {check.allowed}")(
        lambda v: next((f"entry {k!r}: {p}" for k, x in v.items() if (p := check(x))), None)
    )


def setting(default: Any, *checks: Check) -> Any:
    """A dataclass field whose value the builder checks with `checks`; a callable default is a factory
    (`setting(list, nonempty)`, `setting(lambda: ["mse"], nonempty)`)."""
    if callable(default):
        return field(default_factory=default, metadata={"checks": checks})
    return field(default=default, metadata={"checks": checks})


# ---- the builder ---------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _typed(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise PipelineError(
                f"config key '{where}' must be one of {', '.join(map(repr, typing.get_args(tp)))}, got {value!r}"
            )
        return value
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise PipelineError(f"config key '{where}' must be a table, got {type(value).__name__}")
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise PipelineError(f"config key '{where}' must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_typed(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = dict if tp is dict else tp
    if not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
        raise PipelineError(f"config key '{where}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """`cls(**data)`, every key known, typed and checked; an error names the key as `prefix.key`."""
    hints = typing.get_type_hints(cls)
    keyed = {f.name: f for f in fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in keyed:
            close = difflib.get_close_matches(key, list(keyed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(keyed)})"
            raise PipelineError(f"unknown config key '{where}'{hint}")
        kwargs[key] = _typed(value, hints[key], where)
    obj = cls(**kwargs)
    for f in keyed.values():
        for check in f.metadata.get("checks", ()):
            if problem := check(getattr(obj, f.name)):
                raise PipelineError(f"config key '{prefix + '.' if prefix else ''}{f.name}' {problem}")
    return obj


# ---- the shared tables ---------------------------------------------------------------------------


@dataclass
class PathsCfg:
    """Where the pipeline writes, relative to the working directory. Several commands may share them."""

    cache_dir: str = "zoomshot-out/cache"  # the HDF5 feature store (docs/cache.md)
    runs_dir: str = "zoomshot-out/runs"  # one folder per fitted run: its maps and run.json
    results_dir: str = "zoomshot-out/results"  # one JSON per (run, test split) that `pipeline evaluate` writes
    report_dir: str = "zoomshot-out/report"  # the tables and figures of `pipeline report`


class _Model:
    """What CLIP and the encoders share: weights named by `pretrained`, found at `location`."""

    name: str
    model: str
    pretrained: str
    location: str
    family_name: typing.ClassVar[str]

    @property
    def family(self) -> str:
        return IMPORTED if self.model == IMPORTED else self.family_name

    @property
    def weights(self) -> str:
        """Where the weights are: `pretrained` with a shipped `assets:` name resolved by the loader."""
        return self.location or self.pretrained

    def spec(self) -> dict:
        """What the encoder factory (`extract/encoders.py`) builds the model from."""
        return {
            "family": self.family,
            "name": self.name,
            "model": self.model,
            "pretrained": self.weights,
            "options": getattr(self, "options", {}),
        }

    def identity(self) -> dict:
        """What changes its features: family, model, weights content, options (not the name, not a path)."""
        return {
            "family": self.family,
            "model": self.model,
            "weights": keys.weights_fingerprint(self.weights),
            "options": getattr(self, "options", {}),
        }

    def key(self) -> str:
        return keys.digest(self.identity())


@dataclass
class ClipCfg(_Model):
    """The CLIP (open_clip) whose image and text towers the encoders' features are mapped into."""

    name: str = setting("clip", name_like)  # its name in runs, results and `--encoders`
    model: str = "zoomshot-tiny-clip"  # an open_clip model name (OpenAI weights from a file: `-quickgelu`)
    pretrained: str = ""  # "" random weights; a tag, a local file, `local-dir:PATH` or `assets:FILE`
    templates: str = "shapes"  # a key of the templates file, or "openai-imagenet"
    templates_file: str = ""  # CLIP_benchmark-style JSON; "" = the shipped world templates
    classfree_prompts: str = ""  # one prompt a line, or assets:FILE; "" = the world's or the generic set (shipped.py)
    batch_size: int = setting(256, at_least(1))  # prompts per text-encoder batch
    micro_batch: int = setting(0, at_least(0))  # images per forward pass (0 = the whole extraction batch)
    location: str = field(default="", init=False, repr=False)
    family_name: typing.ClassVar[str] = "open_clip"


@dataclass
class EncoderCfg(_Model):
    """One frozen vision encoder (timm) to give CLIP's zero-shot ability; one `[[encoders]]` table each."""

    name: str = setting("", name_like)  # its name in cache files, runs, results and `[fit] encoders`
    model: str = ""  # a timm model name
    pretrained: str = ""  # "" random weights; a timm tag, a local file or `assets:FILE`
    options: dict = field(default_factory=dict)  # extra timm.create_model keyword arguments
    micro_batch: int = setting(0, at_least(0))  # images per forward pass (0 = the whole extraction batch)
    location: str = field(default="", init=False, repr=False)
    family_name: typing.ClassVar[str] = "timm"


@dataclass
class DatasetCfg:
    """One dataset the splits are read from (`DATASET:SPLIT` elsewhere names it); one `[[datasets]]` table each."""

    name: str = setting("", name_like)  # the DATASET of `DATASET:SPLIT` references
    kind: str = "shapes"  # a dataset kind (`pipeline list`); its options are checked per kind
    root: str = ""  # the folder of its files (not needed by the generated `shapes` kinds)
    options: dict = field(default_factory=dict)  # the kind's options (below: Dataset options by kind)

    def spec(self) -> dict:
        """What the dataset registry (`extract/datasets.py`) opens a split from."""
        return {"name": self.name, "kind": self.kind, "root": self.root, "options": self.options}

    def _options(self) -> dict:
        """The options by content (files by their sha256), without `download`, which changes no number, and
        without a `style` of "photo": the world's images before it had styles, so their caches stay valid."""
        return keys.content_of_options(
            {k: v for k, v in self.options.items() if k != "download" and (k, v) != ("style", "photo")}
        )

    def identity(self, split: str, record: DataRecord) -> dict:
        """What changes a split's images, labels or names: kind, options, split, and the files under
        `root` (by listing, as `record` holds it); not the dataset's name, not the root's path."""
        return {"kind": self.kind, "options": self._options(), "split": split, "data": record.split_data(split)}

    def class_identity(self, record: DataRecord) -> dict:
        """What changes the class names: kind, options, the class folders of an image tree, and a
        `classnames.txt` at the root (a webdataset's names), as `record` holds them."""
        return {"kind": self.kind, "options": self._options(), **record.classes()}


@dataclass
class Subsets:
    """What of the `[extract]` table names a feature file: which nested subset of each split is
    extracted (DESIGN.md section 3), and the decode settings that change pixels (`extract/decode.py`)."""

    fraction: float = setting(1.0, unit_fraction)  # the share of each split extracted (a nested subset)
    split_fractions: dict = setting(dict, values(number_fraction))  # per split, e.g. {"imagenet:train" = 0.2}
    subset_seed: int = setting(0, at_least(0))  # seeds numpy's permutation: not negative
    jpeg_draft: bool = True  # JPEGs decoded at the smallest 1/2^k scale the encoders' resizes allow
    gpu_preprocess: bool = False  # CUDA: resize, crop and normalize on the GPU after a uint8 upload
    gpu_decode: bool = False  # CUDA: JPEGs decoded on the GPU (nvJPEG); implies gpu_preprocess
    content_hash: bool = False  # the split's key holds every file's sha256, not only its listing (docs/cache.md)

    def fraction_of(self, ref: str) -> float:
        return float(self.split_fractions.get(ref, self.fraction))

    def pixels(self) -> dict:
        """The decode settings in a feature file's key. Empty for the full-size CPU decode every file
        before these settings was made with, so such files keep their keys."""
        return {k: True for k in ("jpeg_draft", "gpu_preprocess", "gpu_decode") if getattr(self, k)}


def parse_ref(ref: str) -> tuple[str, str]:
    """'shapes:train' -> ('shapes', 'train')."""
    if problem := split_ref(ref):
        raise PipelineError(f"split reference {problem}")
    name, _, split = ref.partition(":")
    return name, split


@dataclass
class Project:
    """The shared part of a configuration: enough to name every cache file, run and result."""

    paths: PathsCfg
    clip: ClipCfg
    encoders: list[EncoderCfg]
    datasets: list[DatasetCfg]
    subsets: Subsets

    def path(self, name: str) -> Path:
        """Paths are used as given (relative to the working directory), made absolute so that dask
        workers with another working directory find the same files."""
        return Path(getattr(self.paths, name)).absolute()

    def dataset(self, name: str) -> DatasetCfg:
        for d in self.datasets:
            if d.name == name:
                return d
        raise PipelineError(
            f"unknown dataset {name!r}: add a [[datasets]] table with name = {name!r} "
            f"(known: {', '.join(d.name for d in self.datasets) or 'none'})"
        )

    def data_record(self, dataset: str) -> DataRecord:
        """What extraction saw of a dataset's files, recorded in the cache (`cache/records.py`): keys
        are found from it without walking the image tree, and without the images at all."""
        return DataRecord(
            records.record_path(self.path("cache_dir"), dataset),
            dataset,
            self.dataset(dataset).root,
            self.subsets.content_hash,
        )

    def split_identity(self, dataset: str, split: str) -> dict:
        return self.dataset(dataset).identity(split, self.data_record(dataset))

    def split_key(self, dataset: str, split: str) -> str:
        return keys.digest(self.split_identity(dataset, split))

    def class_identity(self, dataset: str) -> dict:
        return self.dataset(dataset).class_identity(self.data_record(dataset))

    def encoder(self, name: str) -> EncoderCfg | ClipCfg:
        if name == self.clip.name:
            return self.clip
        for e in self.encoders:
            if e.name == name:
                return e
        raise PipelineError(
            f"unknown encoder {name!r} (known: {', '.join([self.clip.name] + [e.name for e in self.encoders])})"
        )
