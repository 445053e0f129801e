"""Stage 3: score cached test features of every finished run (and CLIP itself, the ceiling) against
cached class-prompt embeddings; one CLIP_benchmark-style JSON per (run, dataset).

A run is scored only on features of the very encoder weights and settings it was fitted on, and
against the text embeddings of the CLIP it was fitted to: the test files are located by the content
keys its run.json records, not by what the config says today. A run or a file that cannot be read,
or whose inputs the cache does not hold, is one line and is skipped; the others go on.

Reads only the cache and run folders: never an image, never an encoder, never `fit` internals.
Test sets stream in chunks of rows, so memory stays bounded whatever their size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from zoomshot.cache import atomic, layout, locks, store, timestamps
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.runs import Maps, Run, read_run, run_dirs
from zoomshot.cache.settings import IMPORTED, Project, parse_ref
from zoomshot.cache.zero_shot import cosine_similarities

from .gap import GapAccumulator, GapView
from .metrics import MetricAccumulator, class_embeddings
from .retrieval import Retrieval
from .settings import EvaluateCfg

TASK = "zeroshot_classification"
Say = Callable[[str], None]


@dataclass
class Classes:
    """A dataset's zero-shot classifier, from its class-prompt text file."""

    emb: torch.Tensor  # (C, d) class embeddings
    names: list[str]
    groups: dict[str, list[int]]  # named class sets scored on their own too (`acc1_<name>`)


def load_classes(path: Path) -> Classes:
    text = store.read_text(path)
    try:
        emb = class_embeddings(
            torch.from_numpy(text.embeddings), torch.from_numpy(text.class_of_prompt), len(text.classnames)
        )
    except ValueError as e:
        raise PipelineError(f"{path.name}: {e}") from None
    return Classes(emb, text.classnames, json.loads(text.attrs.get("class_groups", "{}")))


def aligned_chunks(paths: list[Path], chunk_rows: int) -> Iterator[list[store.FeatureFile]]:
    """Aligned row chunks of files that hold the same rows (a student's test file and CLIP's)."""
    files = []
    try:
        for p in paths:
            files.append(store.open_complete(p))
        n = files[0]["features"].shape[0]
        for f, p in zip(files[1:], paths[1:]):
            store.check_same_rows(f"{p.name} and {paths[0].name}", f["index"][:], files[0]["index"][:])
        for i in range(0, n, chunk_rows):
            yield [
                store.FeatureFile(p, *store.read_rows(p, f, slice(i, i + chunk_rows)), {}) for f, p in zip(files, paths)
            ]
    finally:
        for f in files:
            f.close()


def score(
    student: Path, teacher: Path, classes: Classes, maps: Maps | None, chunk_rows: int, per_class: bool = False
) -> dict:
    """Metrics of `maps.to_clip(student features)` (or the features themselves) against the classes,
    with CLIP (`teacher`) agreement and the modality gap (`evaluate/gap.py`). Every width and label is
    checked: one clear line, not a traceback."""
    width = classes.emb.shape[1]
    acc = MetricAccumulator(classes.emb.shape[0])
    gap = GapAccumulator(classes.emb)
    paths = [student] if student == teacher else [student, teacher]
    for chunk in aligned_chunks(paths, chunk_rows):
        s, t = torch.from_numpy(chunk[0].features), torch.from_numpy(chunk[-1].features)
        if maps is not None:
            if s.shape[1] != maps.source_dim:
                raise PipelineError(
                    f"{student.name} holds {s.shape[1]}-wide features, the run's map takes "
                    f"{maps.source_dim}: they come from different encoders"
                )
            s = maps.to_clip(s)
        for what, x in (("mapped" if maps is not None else student.name, s), (teacher.name, t)):
            if x.shape[1] != width:
                raise PipelineError(
                    f"{what} features are {x.shape[1]}-wide, the class-prompt embeddings "
                    f"{width}-wide: they come from different CLIP models"
                )
        labels = torch.from_numpy(chunk[0].labels)
        try:
            acc.update(cosine_similarities(s, classes.emb), labels, cosine_similarities(t, classes.emb))
        except ValueError as e:
            raise PipelineError(f"{student.name}: {e}") from None
        gap.update(s, labels)
    metrics = {**acc.compute(per_class, classes.groups), **gap.compute()}
    if metrics["n_labeled"] == 0:
        raise PipelineError(
            f"{student.name} has no labels (every row is -1): there is nothing to score; import the split with --labels"
        )
    return metrics


def write_result(result: dict, path: Path) -> Path:
    """Each result file is stamped as it is written: its `created` is unique and orders re-evaluations."""
    return atomic.write_json(path, {**result, "created": timestamps.now()})


def run_fields(run: Run) -> dict:
    """The provenance of a fitted run that every result of it carries."""
    r = run.record
    return {
        "model": r["encoder"],
        "pretrained": r.get("encoder_pretrained", ""),
        "run": run.name,
        "encoder": r["encoder"],
        "encoder_key": r["encoder_key"],
        "clip_key": r["clip_key"],
        "loss_weights": {k: v for k, v in r["params"].items() if k.startswith("w_")},
        "params": r["params"],
        "fraction": r["fraction"],
        "epochs": r["epochs"],
        "seed": r["seed"],
        "train_data": r["train"],
        "rows": r.get("rows"),
        "versions": r.get("versions", {}),
    }


def open_runs(project: Project, names: list[str] | None, say: Say) -> tuple[list[tuple[Run, Maps]], int]:
    """The named runs (None: every run folder) with their checked maps; a damaged run, or one another
    process is writing, is one line and left out. Returns the runs and how many were left out."""
    opened, skipped = [], 0
    for run_dir in [] if names == [] else run_dirs(project.path("runs_dir"), names):
        try:
            with locks.trying(run_dir) as free:
                if not free:
                    raise PipelineError(f"run {run_dir.name} is being written by another process (`pipeline fit`)")
                run = read_run(run_dir)
                opened.append((run, run.maps()))
        except PipelineError as e:
            say(f"skip: {e}")
            skipped += 1
    return opened, skipped


@dataclass
class TestInputs:
    """The files one run is scored with on one test split, located by the run's content keys."""

    test_file: Path
    clip_file: Path
    classes: Classes


@dataclass
class Inputs:
    """Locates and caches what every run needs on one test split."""

    project: Project
    ref: str
    _classes: dict[str, Classes] = field(default_factory=dict)

    def features(self, role: str, name: str, key: str, imported: bool) -> Path:
        path = layout.feature_path(self.project, name, self.ref, encoder_key=key, imported=imported)
        if path.exists():
            return path
        configured = self.project.encoder(name).key() if name in self._names() else None
        if configured == key:
            raise PipelineError(
                f"cache file {path.name} ({role} on {self.ref}) is missing: run `pipeline "
                f"extract` (or `pipeline cache import`) with the same config"
            )
        raise PipelineError(
            f"it was fitted with {role} {name!r} of other weights or settings than the config's; "
            f"the cache holds no {self.ref} features of those: fit it again with this config "
            f"(`pipeline fit`), or evaluate it with the config that made it"
        )

    def _names(self) -> list[str]:
        return [self.project.clip.name] + [e.name for e in self.project.encoders]

    def classes(self, clip_key: str) -> Classes:
        if clip_key not in self._classes:
            dataset, _ = parse_ref(self.ref)
            path = layout.class_text_path(self.project, dataset, clip_key=clip_key)
            if not path.exists():
                raise PipelineError(
                    f"the class-prompt embeddings of {dataset} for this CLIP ({path.name}) are "
                    f"missing: run `pipeline extract` (or `pipeline cache import --text "
                    f"class-prompts`) with the config of that CLIP"
                )
            self._classes[clip_key] = load_classes(path)
        return self._classes[clip_key]

    def clip(self) -> TestInputs:
        clip = self.project.clip
        path = self.features("CLIP", clip.name, clip.key(), clip.model == IMPORTED)
        return TestInputs(path, path, self.classes(clip.key()))

    def of_run(self, run: Run) -> TestInputs:
        r = run.record
        test = self.features("encoder", r["encoder"], r["encoder_key"], r["encoder_identity"].get("family") == IMPORTED)
        clip = self.features("CLIP", r["clip"], r["clip_key"], r["clip_identity"].get("family") == IMPORTED)
        return TestInputs(test, clip, self.classes(r["clip_key"]))


@dataclass
class Outcome:
    written: list[Path]
    skipped: int


class Skips:
    """Runs left out on one test split, said once per reason: a damaged test file shared by many runs
    is one line naming the file and the runs, not one line per run."""

    def __init__(self, what: str, ref: str):
        self.what, self.ref, self.by_reason = what, ref, {}

    def add(self, run: Run, reason: str) -> None:
        self.by_reason.setdefault(reason, []).append(f"{run.name} ({run.record['encoder']}, {run.record['variant']})")

    def report(self, say: Say) -> int:
        for reason, runs in self.by_reason.items():
            names = (
                f"run {runs[0]}"
                if len(runs) == 1
                else f"{len(runs)} runs ({', '.join(runs[:3])}" + (", ...)" if len(runs) > 3 else ")")
            )
            say(f"skip {self.what}{names} on {self.ref}: {reason}")
        return sum(len(r) for r in self.by_reason.values())


def run_evaluate(
    project: Project, ev: EvaluateCfg, runs: list[tuple[Run, Maps]], say: Say = print, progress: bool = True
) -> Outcome:
    """The given runs (`open_runs`) on every configured test split, plus the CLIP row."""
    out_dir, written, skipped = project.path("results_dir"), [], 0
    for ref in ev.test:
        dataset, split = parse_ref(ref)
        inputs = Inputs(project, ref)
        retrieval = Retrieval(project, ref, ev.retrieval, ev.chunk_rows, say)
        base = {"dataset": dataset, "split": split, "task": TASK}
        try:
            clip = inputs.clip()
            if ev.per_class:  # the names that per_class_acc's entries belong to, for the per-class figure
                base["classnames"] = clip.classes.names
            clip_metrics = score(clip.test_file, clip.clip_file, clip.classes, None, ev.chunk_rows, ev.per_class)
            clip_metrics.update(retrieval.metrics(clip.test_file, None, project.clip.key()))
        except PipelineError as e:
            say(f"skip {ref} (CLIP and every run): {e}")
            skipped += 1 + len(runs)
            continue
        written.append(
            write_result(
                {
                    **base,
                    "model": project.clip.model,
                    "pretrained": project.clip.pretrained,
                    "metrics": clip_metrics,
                    "encoder": project.clip.name,
                    "method": "clip",
                    "variant": "clip",
                    "run": "clip",
                    "clip_key": project.clip.key(),
                    "cache_keys": [clip.test_file.name],
                },
                out_dir / "clip" / f"{dataset}-{split}.json",
            )
        )
        skips = Skips("", ref)
        for run, maps in tqdm(runs, desc=f"score {ref}", unit="run", disable=not progress):
            try:
                got = inputs.of_run(run)
                metrics = score(got.test_file, got.clip_file, got.classes, maps, ev.chunk_rows, ev.per_class)
                metrics.update(retrieval.metrics(got.test_file, maps, run.record["clip_key"]))
            except PipelineError as e:
                skips.add(run, str(e))
                continue
            metrics["clip_acc1"] = (
                clip_metrics["acc1"]
                if got.clip_file == clip.clip_file
                else score(got.clip_file, got.clip_file, got.classes, None, ev.chunk_rows)["acc1"]
            )
            result = {
                **base,
                **run_fields(run),
                "metrics": metrics,
                "method": run.record["method"],
                "variant": run.record["variant"],
                "cache_keys": run.record["inputs"]["files"] + [got.test_file.name, got.clip_file.name],
            }
            written.append(write_result(result, out_dir / run.name / f"{dataset}-{split}.json"))
        skipped += skips.report(say)
    return Outcome(written, skipped)


def _head_rows(path: Path, n: int) -> np.ndarray:
    with store.open_complete(path) as f:
        return store.read_rows(path, f, slice(0, n))[0]


def gap_views(project: Project, test: list[str], results: list[dict], max_rows: int = 1500) -> dict[str, GapView]:
    """Per test dataset, what the modality-gap figure draws: CLIP's test image and class-text features,
    and the test features of each encoder's best zero-shot run mapped into CLIP's space, with the gaps
    their results measured. Unreadable inputs are left out."""
    out: dict[str, GapView] = {}
    for ref in test:
        dataset, _ = parse_ref(ref)
        inputs = Inputs(project, ref)
        mine = [r for r in results if r["dataset"] == dataset and "gap" in r["metrics"]]
        try:
            clip = inputs.clip()
            view = GapView(_head_rows(clip.test_file, max_rows), clip.classes.emb.numpy(), clip.classes.names)
        except PipelineError:
            continue
        clip_gaps = [r["metrics"]["gap"] for r in mine if r["method"] == "clip"]
        if clip_gaps:
            view.gaps["CLIP image"] = clip_gaps[-1]
        best: dict[str, dict] = {}
        for r in mine:
            if r["method"] != "clip" and (
                r["encoder"] not in best or r["metrics"]["acc1"] > best[r["encoder"]]["metrics"]["acc1"]
            ):
                best[r["encoder"]] = r
        for enc, r in sorted(best.items()):
            label = f"{enc} mapped ({r['variant']})"
            try:
                run = read_run(project.path("runs_dir") / r["run"])
                got = inputs.of_run(run)
                view.mapped[label] = run.maps().to_clip(torch.from_numpy(_head_rows(got.test_file, max_rows))).numpy()
            except PipelineError:
                continue
            view.gaps[label] = r["metrics"]["gap"]
        out[dataset] = view
    return out
