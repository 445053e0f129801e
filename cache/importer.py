"""`pipeline cache import`: features and text embeddings computed elsewhere, checked against what the cache
already holds (widths in each space, the split's row order, labels against the classes), then written as
if extracted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import catalog, layout, locks, store
from .errors import PipelineError
from .settings import Project


def _complete_files(project: Project, folder: str, match: dict) -> list[Path]:
    """Complete files under `<cache_dir>/<folder>` whose attributes equal `match` (None matches anything)."""
    found = []
    for p in catalog.cache_files(project.path("cache_dir")):
        if p.parent.name != folder or p.suffix != ".h5":
            continue
        try:
            attrs = store.read_attrs_complete(p)
        except PipelineError:
            continue
        if all(v is None or attrs.get(k) == v for k, v in match.items()):
            found.append(p)
    return found


def _feature_files(project: Project, dataset: str | None, encoder: str | None, split: str | None = None) -> list[Path]:
    """Complete feature files already in the cache for a dataset, an encoder and/or a split."""
    return _complete_files(project, "features", {"dataset": dataset, "encoder": encoder, "split": split})


def _clip_space_files(project: Project) -> list[Path]:
    """Every cached file whose rows are in CLIP's space: its image features and every text embedding."""
    return _feature_files(project, None, project.clip.name) + _complete_files(
        project, "text", {"clip": project.clip.name}
    )


def _known_classes(project: Project, dataset: str) -> int | None:
    path = layout.class_text_path(project, dataset)
    return len(store.read_text(path).classnames) if path.exists() else None


def _check_width(files: list[Path], width: int, what: str, space: str) -> None:
    for p in files:
        dim = int(store.read_attrs(p)["dim"])
        if dim != width:
            raise PipelineError(
                f"{what} are {width}-wide but {p.name} in the cache holds {dim}-wide {space} features: "
                f"both must come from the same {space} model"
            )


def _check_index_like(files: list[Path], index: np.ndarray) -> None:
    """The same rows as the split's files of other encoders, which they pair with by position."""
    for p in files:
        with store.open_complete(p) as f:
            theirs = f["index"][:]
        if not np.array_equal(theirs, index):
            raise PipelineError(
                f"the index differs from that of {p.name} in the cache ({len(theirs)} rows, "
                f"{theirs[:1].tolist()}..{theirs[-1:].tolist()}): every encoder's file of a split "
                f"must hold the same images in the same order"
            )


def import_image_features(
    project: Project,
    data: np.ndarray,
    encoder: str,
    dataset: str,
    split: str,
    labels: str | None,
    index: str | None,
    classnames: str | None,
    source: str,
    say: Callable[[str], None],
) -> Path:
    ref = f"{dataset}:{split}"
    target = layout.feature_path(project, encoder, ref)
    if target.exists():
        raise PipelineError(f"{target.name} already exists: `pipeline cache rm {target.name}` first")
    names = catalog.read_lines(Path(classnames)) if classnames else []
    n_classes = len(names) or _known_classes(project, dataset)
    spec = project.encoder(encoder)
    if encoder == project.clip.name:
        _check_width(_clip_space_files(project), data.shape[1], "these CLIP image features", "CLIP")
    else:
        _check_width(_feature_files(project, None, encoder), data.shape[1], f"these {encoder} features", encoder)
    rows = catalog.check_index(catalog.load_array(Path(index)) if index else None, len(data))
    _check_index_like(_feature_files(project, dataset, None, split), rows)
    with locks.holding([target], say):
        return catalog.import_features(
            target,
            data,
            catalog.load_array(Path(labels)) if labels else None,
            rows,
            {
                "encoder": encoder,
                "model": spec.model,
                "pretrained": spec.pretrained,
                "identity": spec.identity(),
                "encoder_key": spec.key(),
                "dataset": dataset,
                "split": split,
                "dataset_identity": project.split_identity(dataset, split),
                "classnames": names,
                "imported_from": Path(source).name,
                "preprocess": {},
                "versions": {},
            },
            num_classes=n_classes,
        )


def _text_attrs(project: Project) -> dict:
    return {
        "clip": project.clip.name,
        "identity": project.clip.identity(),
        "clip_key": project.clip.key(),
        "imported": True,
    }


def import_class_prompts(
    project: Project,
    data: np.ndarray,
    dataset: str,
    prompts: str | None,
    classnames: str | None,
    class_of_prompt: str | None,
) -> Path:
    if not classnames:
        raise PipelineError("class-prompt embeddings need --classnames (one class name a line)")
    names = catalog.read_lines(Path(classnames))
    lines = _prompt_lines(prompts, len(data))
    if class_of_prompt:
        cop = catalog.check_ints(
            catalog.load_array(Path(class_of_prompt)), len(data), "--class-of-prompt", 0, len(names)
        )
    elif len(data) % len(names) == 0:
        cop = np.repeat(np.arange(len(names)), len(data) // len(names))
    else:
        raise PipelineError(
            f"{len(data)} prompts do not split evenly over {len(names)} classes: give --class-of-prompt"
        )
    if len(np.unique(cop)) != len(names):
        raise PipelineError(f"classes without any prompt: {sorted(set(range(len(names))) - set(cop.tolist()))[:5]}")
    _check_width(_clip_space_files(project), data.shape[1], "these class-prompt embeddings", "CLIP")
    for p in _feature_files(project, dataset, None):
        top = int(store.read_features(p).labels.max(initial=-1))
        if top >= len(names):
            raise PipelineError(
                f"{p.name} in the cache has labels up to {top}, but --classnames lists {len(names)} classes"
            )
    target = layout.class_text_path(project, dataset)
    return store.write_text(
        target,
        store.TextEmbeddings(
            data, lines, cop, names, {"dataset": dataset, "prompt_set": "class-prompts", **_text_attrs(project)}
        ),
    )


def _prompt_lines(prompts: str | None, count: int) -> list[str]:
    lines = layout.read_prompt_file(prompts) if prompts else [f"prompt {i}" for i in range(count)]
    if len(lines) != count:
        raise PipelineError(f"{prompts} has {len(lines)} prompts but the array has {count} rows")
    return lines


def import_classfree(project: Project, data: np.ndarray, prompts: str | None, say: Callable[[str], None]) -> Path:
    """Keyed by the prompts themselves: `fit` finds them only when [clip] classfree_prompts holds the same."""
    lines = _prompt_lines(prompts or project.clip.classfree_prompts, len(data))
    _check_width(_clip_space_files(project), data.shape[1], "these class-free prompt embeddings", "CLIP")
    target = layout.classfree_text_path(project, prompts=lines)
    if lines != layout.classfree_prompts(project):
        say(
            f"note: these prompts differ from [clip] classfree_prompts ({project.clip.classfree_prompts}); "
            f"`pipeline fit` uses them only with a config whose classfree_prompts file holds them"
        )
    return store.write_text(
        target,
        store.TextEmbeddings(
            data, lines, -np.ones(len(data), np.int64), [], {"prompt_set": "classfree", **_text_attrs(project)}
        ),
    )
