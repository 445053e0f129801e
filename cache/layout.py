"""Where every cache file lives, computed from the settings alone, so `fit` and `evaluate` find the
cache without building a model or opening a dataset (docs/cache.md).

    <cache_dir>/features/<dataset>_<split>_<encoder>_<key>.h5   one per (dataset, split, encoder, subset)
    <cache_dir>/text/<dataset>-classes_<clip>_<key>.h5          class-prompt embeddings
    <cache_dir>/text/classfree_<clip>_<key>.h5                  the class-free prompt set of the losses
    <cache_dir>/text/<dataset>-<split>-captions_<clip>_<key>.h5 captions of a split's cached images

A key is a content hash (`keys.py`); `encoder_key` / `clip_key` name other weights than the
configured ones, which is how a run is evaluated on features of the very weights it was fitted on.
"""

from __future__ import annotations

from pathlib import Path

from . import keys
from .errors import PipelineError
from .settings import IMPORTED, Project, parse_ref

OPENAI_TEMPLATES = "openai-imagenet"  # open_clip's OpenAI ImageNet templates, by name


def read_prompt_file(path: str | Path) -> list[str]:
    """A prompt set: one prompt a line; blank lines and `#` comments are skipped."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError(
            f"cannot read the prompt file {p}: {e}; give a UTF-8 text file, one prompt a line"
        ) from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not prompts:
        raise PipelineError(f"prompt file {p} holds no prompts")
    return prompts


def feature_path(
    project: Project, encoder: str, ref: str, encoder_key: str | None = None, imported: bool | None = None
) -> Path:
    """The cache file of `encoder` on `ref` ('dataset:split') under the configured subset; `encoder_key`
    (and whether that encoder is imported) name other weights than the configured ones.

    Imported features are whole splits: their key ignores the extraction fraction and seed.
    """
    name, split = parse_ref(ref)
    if encoder_key is None:
        encoder_key, imported = project.encoder(encoder).key(), project.encoder(encoder).model == IMPORTED
    whole = imported or project.dataset(name).kind == IMPORTED
    fraction, seed = (1.0, 0) if whole else (project.subsets.fraction_of(ref), project.subsets.subset_seed)
    pixels = {} if whole else project.subsets.pixels()
    key = keys.feature_key(encoder_key, project.split_key(name, split), fraction, seed, pixels)
    return project.path("cache_dir") / "features" / keys.feature_name(name, split, encoder, key)


def templates_identity(project: Project) -> dict:
    """The class-name templates by content (a name of open_clip's own list, or a file's sha256)."""
    clip = project.clip
    if clip.templates == OPENAI_TEMPLATES:
        return {"templates": OPENAI_TEMPLATES}
    path = Path(clip.templates_file)
    if not path.is_file():
        raise PipelineError(f"templates file {path} not found: fix `templates_file` in the [clip] table")
    return {"templates": clip.templates, "templates_file": "sha256:" + keys.file_checksum(path)}


def class_text_path(project: Project, dataset: str, clip_key: str | None = None) -> Path:
    """Class-prompt embeddings of a dataset: the CLIP, the dataset's classes and the templates."""
    spec = {
        "clip": clip_key or project.clip.key(),
        "classes": project.class_identity(dataset),
        **templates_identity(project),
    }
    return (
        project.path("cache_dir") / "text" / keys.text_name(f"{dataset}-classes", project.clip.name, keys.digest(spec))
    )


def classfree_prompts(project: Project) -> list[str]:
    return read_prompt_file(project.clip.classfree_prompts)


def classfree_text_path(project: Project, prompts: list[str] | None = None, clip_key: str | None = None) -> Path:
    """The class-free prompt set's embeddings, keyed by the prompts themselves (the configured file's,
    or the ones an import brings)."""
    prompts = classfree_prompts(project) if prompts is None else prompts
    key = keys.digest({"clip": clip_key or project.clip.key(), "prompts": prompts})
    return project.path("cache_dir") / "text" / keys.text_name("classfree", project.clip.name, key)


def caption_text_path(project: Project, ref: str, clip_key: str | None = None) -> Path:
    """Caption embeddings of the images of split `ref`: keyed like its CLIP feature file (the CLIP, the
    split's content, the subset), since they caption exactly that file's rows. `class_of_prompt` holds
    the dataset index of each caption's image."""
    name, split = parse_ref(ref)
    spec = {
        "clip": clip_key or project.clip.key(),
        "dataset": project.split_key(name, split),
        "fraction": project.subsets.fraction_of(ref),
        "seed": project.subsets.subset_seed,
    }
    return (
        project.path("cache_dir")
        / "text"
        / keys.text_name(f"{name}-{split}-captions", project.clip.name, keys.digest(spec))
    )


def bad_list_path(cache_file: Path) -> Path:
    """The text file beside a cache file that lists the images it skipped (removed with the file)."""
    return cache_file.with_name(cache_file.name + ".bad.txt")


def shard_path(target: Path, i: int, k: int) -> Path:
    return target.with_name(f"{target.stem}.shard{i:03d}-of-{k:03d}.h5")
