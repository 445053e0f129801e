"""Stage 3, training-free adaptation: Tip-Adapter and TIP-X (SuS-X) on cached features.

For CLIP itself and for every finished run (its encoder's features mapped into CLIP's space by the
run's h), each labelled support set (`[evaluate] support`, one cached DATASET:SPLIT or a list: a
name-only support set such as the world's `shapes-support`, k in-distribution shots such as its
`shapes-shots`, an ImageFolder of your own, or k shots of a train split) is split per class, seeded,
into support rows and validation rows. The hyper-parameters of each
method are searched on the validation rows only; the test split never reaches the search. Then the
test split is scored, streamed in chunks, and one result JSON per (run, dataset, method, support set)
is written with the fields of `scoring.py` plus the adapter's own (hyper-parameters, support split and
its label, shots, sizes). The label says what kind of support set it is ("name-only support", "16-shot,
in-distribution"), and the variant carries it, so the report shows each support set's rows apart.

Equations and their sources: `evaluate/adapters.py`. Reads only the cache (through
`zoomshot.cache.store`) and saved maps: never an image, an encoder or `fit` internals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from zoomshot.cache import layout, store
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.runs import Maps, Run
from zoomshot.cache.settings import IMPORTED, Project, parse_ref
from zoomshot.cache.zero_shot import clip_logits

from .adapters import ADAPTERS, search_hparams, support_val_split, tipx_ranges
from .grids import GRIDS
from .metrics import MetricAccumulator
from .scoring import TASK, Inputs, Outcome, Say, Skips, TestInputs, aligned_chunks, run_fields, write_result
from .settings import EvaluateCfg


def variant_name(base: str, method: str, shots: int, label: str) -> str:
    """'mse' + 'tip-x' -> 'mse+tip-x (name-only support)'; with k shots 'mse+tip-x-4shot (name-only support)'."""
    return f"{base}+{method}" + (f"-{shots}shot" if shots else "") + f" ({label})"


def support_label(project: Project, ref: str) -> str:
    """What a support set is, for the rows it makes: the world's name-only set ("name-only support"),
    its k-shot set ("16-shot, in-distribution", or the style when it is not the test images' "photo"),
    or any other split by its reference ("support shapes:train")."""
    dataset = project.dataset(parse_ref(ref)[0])
    if dataset.kind not in ("shapes-support", "shapes-shots"):
        return f"support {ref}"
    style, per_class = dataset.options.get("style"), dataset.options.get("per_class")  # defaults filled by the config
    if dataset.kind == "shapes-support":
        return "name-only support" + ("" if style == "sketch" else f", {style} style")
    return f"{per_class}-shot, " + ("in-distribution" if style == "photo" else f"{style} style")


def result_name(dataset: str, split: str, method: str, shots: int, support: str) -> str:
    """'shapes-test+tip-x@shapes-sus-train.json': one file per (test split, method, shots, support set)."""
    return f"{dataset}-{split}+{method}" + (f"-{shots}shot" if shots else "") + f"@{support.replace(':', '-')}.json"


def summary_line(result: dict) -> str:
    """One line per written result, for `pipeline evaluate --verbose`: the run's fraction and seed, the
    hyper-parameters chosen."""
    m, hp = result["metrics"], result["hparams"]
    chosen = ", ".join(f"{k}={hp[k]:.3g}" for k in ("alpha", "beta", "gamma") if k in hp)
    run = f"fraction={result['fraction']} seed={result['seed']}" if "fraction" in result else "CLIP"
    return (
        f"  {result['encoder']:<10} {result['variant']:<30} {run:<21} {result['dataset']}-{result['split']}: "
        f"top-1 {100 * m['acc1']:.1f} (zero-shot {100 * m['zero_shot_acc1']:.1f}; {chosen}; "
        f"val {result['val_size']} rows)"
    )


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
        raise PipelineError(
            f"{what} has classes that the test dataset lacks: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}"
        )
    remap = np.array([position.get(n, -1) for n in names], dtype=np.int64)
    return np.where(labels >= 0, remap[np.clip(labels, 0, None)], -1)


def _support(path: Path, maps: Maps | None, classnames: list[str], ev: EvaluateCfg, ref: str) -> dict:
    """Support and validation rows of the support file of `ref` (mapped), by the seeded per-class split."""
    ff = store.read_features(path)
    labels = _labels_in(ff, classnames, f"support set {ref} ({path.name})")
    support_rows, val_rows = support_val_split(labels, len(classnames), ev.val_per_class, ev.shots, ev.support_seed)
    if len(val_rows) == 0 or len(support_rows) == 0:
        raise PipelineError(
            f"support set {ref} is too small to hold out validation rows (needs 2 or more labelled rows in a class)"
        )
    feats = torch.from_numpy(ff.features)
    if maps is not None:
        if feats.shape[1] != maps.source_dim:
            raise PipelineError(
                f"support file {path.name} holds {feats.shape[1]}-wide features, the run's map takes {maps.source_dim}"
            )
        feats = maps.to_clip(feats)
    labels_t = torch.from_numpy(labels)
    return {
        "feats": feats[support_rows],
        "labels": labels_t[support_rows],
        "val_feats": feats[val_rows],
        "val_labels": labels_t[val_rows],
        "file": path,
        "index": ff.index,
        "classes_without_support": int(len(classnames) - len(np.unique(labels[support_rows]))),
    }


def _evaluate(
    inputs: TestInputs, maps: Maps | None, sup: dict, methods: list[str], grid: str, chunk_rows: int
) -> tuple[dict, dict, dict]:
    """Search each method on the validation rows, then score the test rows (streamed).

    Returns (hyper-parameter choice per method, test metrics per method, zero-shot metrics)."""
    classes = inputs.classes
    class_emb, groups = classes.emb, classes.groups
    chosen = {
        m: search_hparams(
            sup["val_feats"], sup["val_labels"], sup["feats"], sup["labels"], class_emb, m, GRIDS[grid][m]
        )
        for m in methods
    }
    paths = [inputs.test_file] if inputs.test_file == inputs.clip_file else [inputs.test_file, inputs.clip_file]

    def student(chunk: list[store.FeatureFile]) -> torch.Tensor:
        s = torch.from_numpy(chunk[0].features)
        if maps is not None:
            if s.shape[1] != maps.source_dim:
                raise PipelineError(
                    f"{inputs.test_file.name} holds {s.shape[1]}-wide features, the run's map takes {maps.source_dim}"
                )
            s = maps.to_clip(s)
        if s.shape[1] != class_emb.shape[1]:
            raise PipelineError(f"mapped width {s.shape[1]} != CLIP text width {class_emb.shape[1]}")
        return s

    ranges = {}
    for m in (m for m in methods if ADAPTERS[m].uses_kl):  # psi's ranges over the whole test set, so
        for chunk in aligned_chunks(paths, chunk_rows):  # chunking changes no number
            r = tipx_ranges(student(chunk), sup["feats"], class_emb, chosen[m]["temperature"])
            ranges[m] = r if m not in ranges else ranges[m].merge(r)
    acc = {m: MetricAccumulator(class_emb.shape[0]) for m in ["zero-shot", *methods]}
    for chunk in aligned_chunks(paths, chunk_rows):
        s, y = student(chunk), torch.from_numpy(chunk[0].labels)
        teacher = clip_logits(torch.from_numpy(chunk[-1].features), class_emb)
        acc["zero-shot"].update(clip_logits(s, class_emb), y, teacher)
        for m in methods:
            logits = ADAPTERS[m].logits(s, sup["feats"], sup["labels"], class_emb, chosen[m], ranges.get(m))
            acc[m].update(logits, y, teacher)
    zero_shot = acc.pop("zero-shot").compute(groups=groups)
    return chosen, {m: a.compute(groups=groups) for m, a in acc.items()}, zero_shot


def _adapter_fields(ev: EvaluateCfg, hp: dict, sup: dict, ref: str, label: str) -> dict:
    return {
        "hparams": {k: hp[k] for k in ("alpha", "beta", "gamma", "temperature") if k in hp},
        "support": ref,
        "support_label": label,
        "shots": ev.shots,
        "val_per_class": ev.val_per_class,
        "support_seed": ev.support_seed,
        "support_size": int(len(sup["labels"])),
        "val_size": hp["val_size"],
        "val_acc1": hp["val_acc1"],
        "val_zero_shot_acc1": hp["val_zero_shot_acc1"],
        "classes_without_support": sup["classes_without_support"],
        "search": {"grid": ev.adapter_grid, "ranges": hp["grid"], "at_grid_edge": hp["at_grid_edge"]},
    }


def _check(project: Project, ev: EvaluateCfg) -> dict[str, str]:
    """Each support set's label; a support set that is missing or is a test split is an error."""
    if not ev.supports:
        raise PipelineError(
            "config key 'evaluate.support' is empty: name the cached support set of the "
            'adapters, e.g. support = "shapes-sus:train" (or a train split with shots = k)'
        )
    for ref in ev.supports:
        if ref in ev.test:
            raise PipelineError(
                f"evaluate.support {ref!r} is also a test split: the support set (and the "
                f"validation rows of the search) must not come from the test data"
            )
    labels = [support_label(project, ref) for ref in ev.supports]  # a list: a set named twice is two
    same = [ref for ref, label in zip(ev.supports, labels) if labels.count(label) > 1]
    if same:
        raise PipelineError(
            f"evaluate.support: {' and '.join(same)} are both labelled {labels[ev.supports.index(same[0])]!r}, so "
            f"their rows would read alike; keep one"
        )
    return dict(zip(ev.supports, labels))


def run_adapters(
    project: Project,
    ev: EvaluateCfg,
    runs: list[tuple[Run, Maps]],
    written_callback: Callable[[Path, dict], None] | None = None,
    say: Say = print,
) -> Outcome:
    """`ev.adapters` for CLIP and every given run on every test split, with each support set.

    Writes `<results_dir>/<run or clip>/<dataset>-<split>+<method>[-<k>shot]@<support>.json`; calls
    `written_callback(path, result)` after each. A run whose inputs the cache lacks is one line and is
    skipped, as `pipeline evaluate` does.
    """
    methods = [m for m in ADAPTERS if m in ev.adapters]
    if not methods:
        return Outcome([], 0)
    labels = _check(project, ev)
    out_dir, written, skipped = project.path("results_dir"), [], 0

    def emit(result: dict, folder: str, dataset: str, split: str, method: str) -> None:
        path = write_result(result, out_dir / folder / result_name(dataset, split, method, ev.shots, result["support"]))
        # the file of the same result from before support sets were named (its rows would read unlabelled)
        (out_dir / folder / f"{dataset}-{split}+{method}{f'-{ev.shots}shot' if ev.shots else ''}.json").unlink(
            missing_ok=True
        )
        written.append(path)
        if written_callback is not None:
            written_callback(path, result)

    for ref in ev.test:
        for support, label in labels.items():
            skipped += _adapt_split(project, ev, runs, ref, support, label, methods, emit, say)
    return Outcome(written, skipped)


def _adapt_split(
    project: Project,
    ev: EvaluateCfg,
    runs: list[tuple[Run, Maps]],
    ref: str,
    support: str,
    label: str,
    methods: list[str],
    emit: Callable[..., None],
    say: Say,
) -> int:
    """CLIP and every run adapted with one support set on one test split; returns how many it skipped."""
    clip_cfg = project.clip
    dataset, split = parse_ref(ref)
    inputs = Inputs(project, ref)
    base = {"dataset": dataset, "split": split, "task": TASK}
    try:
        clip = inputs.clip()
        clip_sup_file = layout.feature_path(project, clip_cfg.name, support)
        clip_support = _support(clip_sup_file, None, clip.classes.names, ev, support)
        chosen, metrics, zero_shot = _evaluate(clip, None, clip_support, methods, ev.adapter_grid, ev.chunk_rows)
    except PipelineError as e:
        say(f"skip adapters with {support} on {ref} (CLIP and every run): {e}")
        return 1 + len(runs)
    clip_acc1 = zero_shot["acc1"]
    for m in methods:
        result = {
            **base,
            "model": clip_cfg.model,
            "pretrained": clip_cfg.pretrained,
            "metrics": {**metrics[m], "clip_acc1": clip_acc1, "zero_shot_acc1": clip_acc1},
            "encoder": clip_cfg.name,
            "method": m,
            "variant": variant_name("clip", m, ev.shots, label),
            "base_variant": "clip",
            "run": "clip",
            "cache_keys": [clip.test_file.name, clip_sup_file.name],
            **_adapter_fields(ev, chosen[m], clip_support, support, label),
        }
        emit(result, "clip", dataset, split, m)

    skips = Skips(f"adapters ({support}) of ", ref)
    for run, maps in runs:
        r = run.record
        try:
            got = inputs.of_run(run)
            sup_file = Inputs(project, support).features(
                "encoder", r["encoder"], r["encoder_key"], r["encoder_identity"].get("family") == IMPORTED
            )
            sup = _support(sup_file, maps, got.classes.names, ev, support)
            store.check_same_rows(
                f"its support file {sup_file.name} and CLIP's",
                sup["index"],
                clip_support["index"],
                f"extract {support} for every encoder together",
            )
            chosen, metrics, zero_shot = _evaluate(got, maps, sup, methods, ev.adapter_grid, ev.chunk_rows)
        except PipelineError as e:
            skips.add(run, str(e))
            continue
        for m in methods:
            result = {
                **base,
                **run_fields(run),
                "metrics": {**metrics[m], "clip_acc1": clip_acc1, "zero_shot_acc1": zero_shot["acc1"]},
                "method": m,
                "variant": variant_name(r["variant"], m, ev.shots, label),
                "base_variant": r["variant"],
                "cache_keys": r["inputs"]["files"] + [got.test_file.name, got.clip_file.name, sup_file.name],
                **_adapter_fields(ev, chosen[m], sup, support, label),
            }
            emit(result, run.name, dataset, split, m)
    return skips.report(say)
