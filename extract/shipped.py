"""Files that ship inside the package (`extract/assets/`): the tiny world's weights and open_clip
model config, the world's class-name templates and the default class-free prompts; and what a
`pretrained` value names on disk.

`pretrained = "assets:weights/tiny_clip.safetensors"` names one of them wherever the package is
installed; the config loader resolves it here, so records keep the short, portable name and cache
keys the file's sha256.
"""

from __future__ import annotations

import os
from pathlib import Path

from zoomshot.cache.keys import LOCAL_DIR

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

ASSETS = Path(__file__).resolve().parent / "assets"
PREFIX = "assets:"
MODEL_CONFIGS = ASSETS / "model_configs"
TEMPLATES = ASSETS / "world_templates.json"  # CLIP_benchmark JSON format, key "shapes"
CLASSFREE_PROMPTS = ASSETS / "classfree_prompts.txt"  # the world's vocabulary ("something red")
GENERIC_PROMPTS = ASSETS / "generic_prompts.txt"  # real data: scripts/make_generic_prompts.py
WORLD_KINDS = ("shapes", "shapes-support", "shapes-shots")


def default_classfree_prompts(kinds: list[str]) -> Path:
    """The class-free set a config gets when it names none: the world's own prompts only when every
    dataset is the generated world (they describe its colours and shapes), the generic set otherwise."""
    return CLASSFREE_PROMPTS if kinds and all(k in WORLD_KINDS for k in kinds) else GENERIC_PROMPTS


def resolve(value: str) -> str:
    """What a `pretrained` value names on disk: `assets:NAME` resolved, anything else unchanged."""
    if value.startswith(PREFIX):
        return str(ASSETS / value.removeprefix(PREFIX))
    return value


def missing_weights(location: str) -> str | None:
    """The path a `pretrained` location names when that path does not exist (None when it does, or
    when the value is a tag to download)."""
    target = location.removeprefix(LOCAL_DIR)
    names_a_path = (
        location.startswith(LOCAL_DIR) or os.sep in location or "/" in location or location.endswith(WEIGHT_SUFFIXES)
    )
    return target if names_a_path and not Path(target).exists() else None
