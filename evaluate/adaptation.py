"""Stage 3, training-free adaptation: Tip-Adapter and TIP-X (SuS-X) on cached features.

For CLIP itself and for every finished run (its encoder's features mapped into CLIP's space by the
run's h), a labelled support set (`[evaluate] support`, a cached DATASET:SPLIT: a name-only support
set such as the world's `shapes-support`, an ImageFolder of your own, or k shots of a train split)
is split per class, seeded, into support rows and validation rows. The hyper-parameters of each
method are searched on the validation rows only; the test split never reaches the search. Then the
test split is scored, streamed in chunks, and one result JSON per (run, dataset, method) is written
with the fields of `scoring.py` plus the adapter's own (hyper-parameters, support split, shots, sizes).

Equations and their sources: `evaluate/adapters.py`. Reads only the cache (through
`zoomshot.cache.store`) and saved maps: never an image, an encoder or `fit` internals.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from zoomshot.cache import store
from zoomshot.cache.errors import PipelineError
from zoomshot.cli import config as C

from . import adapters as A
from .metrics import MetricAccumulator
from .scoring import TASK, aligned_chunks, load_classes, load_mapping, run_fields, write_result

Mapping = Callable[[torch.Tensor], torch.Tensor]


def variant_name(base: str, method: str, shots: int) -> str:
    """'mse' + 'tip-x' -> 'mse+tip-x'; with k shots 'mse+tip-x-4shot'."""
    return f"{base}+{method}" + (f"-{shots}shot" if shots else "")


def summary_line(result: dict) -> str:
    """One line per written result, for the command's output."""
    m, hp = result["metrics"], result["hparams"]
    chosen = ", ".join(f"{k}={hp[k]:.3g}" for k in ("alpha", "beta", "gamma") if k in hp)
    return (f"  {result['encoder']:<10} {result['variant']:<30} {result['dataset']}-{result['split']}: "
            f"top-1 {100 * m['acc1']:.1f} (zero-shot {100 * m['zero_shot_acc1']:.1f}; {chosen}; "
            f"val {result['val_size']} rows)")


def _labels_in(ff: store.FeatureFile, classnames: list[str], what: str) -> np.ndarray:
    """The file's labels as indices into `classnames` (the test dataset's), -1 where unknown."""
    names = ff.attrs.get("classnames")
    if isinstance(names, str):
        names = json.loads(names)
    labels = np.asarray(ff.labels, dtype=np.int64)
    if not names or list(names) == list(classnames):
        if labels.max(initial=-1) >= len(classnames):
            raise PipelineError(f"{what} has labels up to {labels.max()}, the test dataset {len(classnames)} classes")
        return labels
    position = {n: i for i, n in enumerate(classnames)}
    used = sorted({names[i] for i in labels[labels >= 0]})
    unknown = [n for n in used if n not in position]
    if unknown:
        raise PipelineError(f"{what} has classes that the test dataset lacks: {', '.join(unknown[:5])}"
                            f"{' ...' if len(unknown) > 5 else ''}")
    remap = np.array([position.get(n, -1) for n in names], dtype=np.int64)
    return np.where(labels >= 0, remap[np.clip(labels, 0, None)], -1)


def _support(path: Path, mapping: Mapping | None, classnames: list[str], cfg: C.Config) -> dict:
    """Support and validation rows of the support file (mapped), by the seeded per-class split."""
    ev = cfg.evaluate
    ff = store.read_features(path)
    labels = _labels_in(ff, classnames, f"support set {ev.support} ({path.name})")
    support_rows, val_rows = A.support_val_split(labels, len(classnames), ev.val_per_class, ev.shots,
                                                 ev.support_seed)
    if len(val_rows) == 0 or len(support_rows) == 0:
        raise PipelineError(f"support set {ev.support} is too small to hold out validation rows "
                            f"(needs 2 or more labelled rows in a class)")
    feats = torch.from_numpy(ff.features)
    if mapping is not None:
        feats = mapping(feats)
    labels_t = torch.from_numpy(labels)
    return {"feats": feats[support_rows], "labels": labels_t[support_rows], "val_feats": feats[val_rows],
            "val_labels": labels_t[val_rows], "file": path, "index": ff.index,
            "classes_without_support": int(len(classnames) - len(np.unique(labels[support_rows])))}


def _evaluate(test_file: Path, clip_file: Path, mapping: Mapping | None, sup: dict, class_emb: torch.Tensor,
              methods: list[str], grid: str, chunk_rows: int,
              groups: dict[str, list[int]] | None = None) -> tuple[dict, dict, dict]:
    """Search each method on the validation rows, then score the test rows (streamed).

    Returns (hyper-parameter choice per method, test metrics per method, zero-shot metrics)."""
    chosen = {m: A.search_hparams(sup["val_feats"], sup["val_labels"], sup["feats"], sup["labels"], class_emb,
                                  m, A.GRIDS[grid][m]) for m in methods}
    paths = [test_file] if test_file == clip_file else [test_file, clip_file]

    def student(chunk: list[store.FeatureFile]) -> torch.Tensor:
        s = torch.from_numpy(chunk[0].features)
        s = mapping(s) if mapping is not None else s
        if s.shape[1] != class_emb.shape[1]:
            raise PipelineError(f"mapped width {s.shape[1]} != CLIP text width {class_emb.shape[1]}")
        return s

    ranges = None
    if "tip-x" in methods:   # psi's ranges over the whole test set, so chunking changes no number
        temperature = chosen["tip-x"]["temperature"]
        for chunk in aligned_chunks(paths, chunk_rows):
            r = A.tipx_ranges(student(chunk), sup["feats"], class_emb, temperature)
            ranges = r if ranges is None else ranges.merge(r)
    acc = {m: MetricAccumulator(class_emb.shape[0]) for m in ["zero-shot", *methods]}
    for chunk in aligned_chunks(paths, chunk_rows):
        s, y = student(chunk), torch.from_numpy(chunk[0].labels)
        teacher = A.zero_shot_logits(torch.from_numpy(chunk[-1].features), class_emb)
        acc["zero-shot"].update(A.zero_shot_logits(s, class_emb), y, teacher)
        for m in methods:
            hp = chosen[m]
            if m == "tip-adapter":
                logits = A.tip_adapter_logits(s, sup["feats"], sup["labels"], class_emb, hp["alpha"], hp["beta"])
            else:
                logits = A.tipx_logits(s, sup["feats"], sup["labels"], class_emb, hp["alpha"], hp["beta"],
                                       hp["gamma"], hp["temperature"], ranges)
            acc[m].update(logits, y, teacher)
    zero_shot = acc.pop("zero-shot").compute(groups=groups)
    return chosen, {m: a.compute(groups=groups) for m, a in acc.items()}, zero_shot


def _adapter_fields(cfg: C.Config, hp: dict, sup: dict) -> dict:
    ev = cfg.evaluate
    return {"hparams": {k: hp[k] for k in ("alpha", "beta", "gamma", "temperature") if k in hp},
            "support": ev.support, "shots": ev.shots, "val_per_class": ev.val_per_class,
            "support_seed": ev.support_seed, "support_size": int(len(sup["labels"])), "val_size": hp["val_size"],
            "val_acc1": hp["val_acc1"], "val_zero_shot_acc1": hp["val_zero_shot_acc1"],
            "classes_without_support": sup["classes_without_support"],
            "search": {"grid": ev.adapter_grid, "ranges": hp["grid"], "at_grid_edge": hp["at_grid_edge"]}}


def _check(cfg: C.Config) -> None:
    ev = cfg.evaluate
    if not ev.support:
        raise PipelineError("config key 'evaluate.support' is empty: name the cached support set of the "
                            "adapters, e.g. support = \"shapes-sus:train\" (or a train split with shots = k)")
    name, _ = C.split_ref(ev.support)
    cfg.dataset(name)
    if ev.support in ev.test:
        raise PipelineError(f"evaluate.support {ev.support!r} is also a test split: the support set (and the "
                            f"validation rows of the search) must not come from the test data")
    if ev.shots < 0 or ev.val_per_class < 0:
        raise PipelineError("config keys 'evaluate.shots' and 'evaluate.val_per_class' must be >= 0")


def run_adapters(cfg: C.Config, runs: list[Path], written_callback: Callable[[Path, dict], None] | None = None,
                 progress: Callable[[str], None] = print) -> list[Path]:
    """`cfg.evaluate.adapters` for CLIP and every given run directory on every test split.

    Writes `<results_dir>/<run or clip>/<dataset>-<split>+<method>[-<k>shot].json`; calls
    `written_callback(path, result)` after each. A run whose cache files are missing is reported through
    `progress` and skipped, as `pipeline evaluate` does.
    """
    ev = cfg.evaluate
    methods = [m for m in A.METHODS if m in ev.adapters]
    if not methods:
        return []
    _check(cfg)
    out_dir, written = cfg.path("results_dir"), []
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def emit(result: dict, folder: str, dataset: str, split: str, method: str) -> None:
        name = f"{dataset}-{split}+{method}" + (f"-{ev.shots}shot" if ev.shots else "") + ".json"
        path = write_result(result, out_dir / folder / name)
        written.append(path)
        if written_callback is not None:
            written_callback(path, result)

    for ref in ev.test:
        dataset, split = C.split_ref(ref)
        classes = load_classes(C.class_text_path(cfg, dataset))
        classnames, class_emb = classes.names, classes.emb
        clip_file = C.feature_path(cfg, cfg.clip.name, ref)
        base = {"dataset": dataset, "split": split, "task": TASK, "created": created}

        clip_support = _support(C.feature_path(cfg, cfg.clip.name, ev.support), None, classnames, cfg)
        chosen, metrics, zero_shot = _evaluate(clip_file, clip_file, None, clip_support, class_emb, methods,
                                               ev.adapter_grid, ev.chunk_rows, classes.groups)
        clip_acc1 = zero_shot["acc1"]
        for m in methods:
            result = {**base, "model": cfg.clip.model, "pretrained": cfg.clip.pretrained,
                      "metrics": {**metrics[m], "clip_acc1": clip_acc1, "zero_shot_acc1": clip_acc1},
                      "encoder": cfg.clip.name, "method": m, "variant": variant_name("clip", m, ev.shots),
                      "run": "clip", "cache_keys": [clip_file.name, clip_support["file"].name],
                      **_adapter_fields(cfg, chosen[m], clip_support)}
            emit(result, "clip", dataset, split, m)

        for run_dir in runs:
            record = json.loads((run_dir / "run.json").read_text())
            try:
                if cfg.encoder(record["encoder"]).identity() != record["encoder_identity"]:
                    raise PipelineError("the config's encoder settings differ from the ones it was fitted on")
                test_file = C.feature_path(cfg, record["encoder"], ref)
                mapping = load_mapping(run_dir / "maps.safetensors")
                sup = _support(C.feature_path(cfg, record["encoder"], ev.support), mapping, classnames, cfg)
                if not np.array_equal(sup["index"], clip_support["index"]):
                    raise PipelineError(f"its support file {sup['file'].name} and CLIP's hold different rows: "
                                        f"extract {ev.support} for every encoder together")
                chosen, metrics, zero_shot = _evaluate(test_file, clip_file, mapping, sup, class_emb, methods,
                                                       ev.adapter_grid, ev.chunk_rows, classes.groups)
            except PipelineError as e:
                progress(f"skip adapters of run {run_dir.name} ({record['encoder']}, {record['variant']}) "
                         f"on {ref}: {e}")
                continue
            for m in methods:
                result = {**base, **run_fields(record, run_dir),
                          "metrics": {**metrics[m], "clip_acc1": clip_acc1, "zero_shot_acc1": zero_shot["acc1"]},
                          "method": m, "variant": variant_name(record["variant"], m, ev.shots),
                          "cache_keys": record["cache_keys"] + [test_file.name, clip_file.name, sup["file"].name],
                          **_adapter_fields(cfg, chosen[m], sup)}
                emit(result, run_dir.name, dataset, split, m)
    return written
