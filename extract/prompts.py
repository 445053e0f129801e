"""Prompt sets: class-name templates (OpenAI ImageNet set, CLIP_benchmark JSON files with a `{c}`
placeholder); the class-free prompt set is a plain prompt file (`cache/layout.py` read_prompt_file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.layout import OPENAI_TEMPLATES


def load_templates(name: str, path: Path) -> list[str]:
    """Templates as `{c}` strings; "openai-imagenet" comes from open_clip's own list."""
    if name == OPENAI_TEMPLATES:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PipelineError(f"cannot read templates file {path}: {e}") from None
    if name not in table:
        raise PipelineError(f"templates file {path} has no entry {name!r} (has: {', '.join(table)})")
    templates = table[name]
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise PipelineError(
            f"templates entry {name!r} in {path} must be a non-empty list of strings with a {{c}} "
            f"placeholder, got {json.dumps(templates)[:60]}"
        )
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise PipelineError(f"templates {bad[:2]} in {path} lack the {{c}} placeholder")
    return templates


def class_prompts(templates: list[str], classnames: list[str]) -> tuple[list[str], np.ndarray]:
    """Every template for every class, class-major, with the class of each prompt."""
    prompts = [t.replace("{c}", c) for c in classnames for t in templates]
    class_of_prompt = np.repeat(np.arange(len(classnames)), len(templates)).astype(np.int64)
    return prompts, class_of_prompt
