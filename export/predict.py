"""`pipeline predict`: the top-k classes, with probabilities, of new images through an exported model.

The classifier is open_clip's `build_zero_shot_classifier` on the model as `load_model` returns it (the
same code runs for CLIP and for a mapped encoder); probabilities are the softmax of CLIP's logit scale
times the cosines. Images are decoded in batches by the extraction's decoder, so an unreadable image is
skipped (and reported) or fatal exactly as `on_bad_image` says there.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from zoomshot.cache import atomic
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.layout import OPENAI_TEMPLATES
from zoomshot.extract.prompts import load_templates
from zoomshot.extract.runner import Decoded, collate

from .model import load_model, read_manifest

EXPORT_TEMPLATES = "export"  # the templates the export was evaluated with
OUTPUT_SUFFIXES = (".csv", ".jsonl")


def image_paths(inputs: list[str]) -> list[Path]:
    """Files as given, and every image file under a folder (by PIL's known suffixes), in sorted order."""
    suffixes = {s.lower() for s in Image.registered_extensions()}
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        elif path.is_file():
            found.append(path)
        else:
            raise PipelineError(f"no image file or folder at {path}")
    if not found:
        raise PipelineError(
            f"no image files in {', '.join(inputs)} (looked for {', '.join(sorted(suffixes)[:6])}, ...)"
        )
    return found


def class_names(classes: str | None, classnames_file: str | None) -> list[str]:
    """`--classes a,b,c` or a file of one name a line: at least one, no duplicates."""
    if bool(classes) == bool(classnames_file):
        raise PipelineError(
            'give the class names with --classes "cat,dog,..." or with --classnames-file FILE '
            "(one name a line), one of the two"
        )
    if classnames_file:
        try:
            text = Path(classnames_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PipelineError(f"cannot read --classnames-file {classnames_file}: {e}") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        raise PipelineError(
            "no class names given: --classes needs names separated by commas, a class-names file one name a line"
        )
    if len(set(names)) != len(names):
        raise PipelineError(f"class names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return names


def templates_of(value: str, model_dir: Path, key: str | None = None) -> list[str]:
    """`export` (the export's own), `openai-imagenet`, a text file (one `{c}` template a line), or a
    CLIP_benchmark JSON file (entry `key`, or its only entry)."""
    if value == EXPORT_TEMPLATES:
        entry = read_manifest(model_dir).get("templates")
        return _with_placeholder(
            entry.get("templates") if isinstance(entry, dict) else None,
            f"the manifest of {model_dir} (give --templates openai-imagenet or a file)",
        )
    if value == OPENAI_TEMPLATES:
        return load_templates(value, Path())
    path = Path(value)
    if path.suffix == ".json":
        if key is None:
            try:
                entries = list(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise PipelineError(f"cannot read templates file {path}: {e}") from None
            if len(entries) != 1:
                raise PipelineError(f"{path} has {len(entries)} entries: choose one with --templates-key")
            key = entries[0]
        return load_templates(key, path)
    try:
        templates = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError(
            f"--templates {value}: neither 'export', '{OPENAI_TEMPLATES}' nor a readable file ({e})"
        ) from None
    return _with_placeholder(templates, f"{path} (one template a line)")


def _with_placeholder(templates: list | None, where: str) -> list[str]:
    """At least one template, each a string with a `{c}` placeholder (else every class gets the same
    prompt, and every probability is 1/C)."""
    if not templates or any(not isinstance(t, str) or "{c}" not in t for t in templates):
        raise PipelineError(
            f"no usable templates in {where}: each needs a {{c}} placeholder for the class name, got "
            f"{json.dumps(templates)[:60]}"
        )
    return templates


def zero_shot_weights(
    model: torch.nn.Module, tokenizer: Callable, classnames: list[str], templates: list[str], device: str
) -> torch.Tensor:
    """(d, C) class embeddings by open_clip's own `build_zero_shot_classifier`."""
    from open_clip import build_zero_shot_classifier

    fill = [lambda c, t=t: t.replace("{c}", c) for t in templates]  # `{c}` templates, as the cache's prompts
    return build_zero_shot_classifier(model, tokenizer, classnames, fill, num_classes_per_batch=16, device=device)


class _Files(Dataset):
    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return Image.open(self.paths[i]), -1


@dataclass
class Predictions:
    rows: list[dict]  # {"image", "top": [{"class", "prob"}, ...]} per readable image
    skipped: list[tuple[Path, str]]


def predict(
    model_dir: Path,
    classnames: list[str],
    templates: list[str],
    paths: list[Path],
    top_k: int,
    batch_size: int = 64,
    device: str = "cpu",
    on_bad_image: str = "skip",
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Predictions:
    """Top-`top_k` classes of every image; unreadable ones are skipped (one line each) or stop it."""
    if not 1 <= top_k <= len(classnames):
        raise PipelineError(f"--top-k must be between 1 and the number of classes ({len(classnames)}), got {top_k}")
    model, preprocess, tokenizer = load_model(model_dir, device)
    with torch.inference_mode():
        weights = zero_shot_weights(model, tokenizer, classnames, templates, device)
    loader = DataLoader(
        Decoded(_Files(paths), np.arange(len(paths)), [preprocess]), batch_size=batch_size, collate_fn=collate
    )
    rows, skipped = [], []
    for _, index, _, views, bad in tqdm(loader, desc="predict", unit="batch", disable=not progress):
        for i, error in bad:
            if on_bad_image == "fail":
                raise PipelineError(f"unreadable image {paths[i]}: {error} (--on-bad-image skip skips it)")
            say(f"skip: unreadable image {paths[i]}: {error}")
            skipped.append((paths[i], error))
        if not len(index):
            continue
        with torch.inference_mode():
            features = model.encode_image(views[0].to(device), normalize=True)
            probs = (model.logit_scale.exp() * features @ weights).softmax(dim=-1).cpu()
        values, classes = probs.topk(top_k, dim=-1)
        for i, p, c in zip(index, values.tolist(), classes.tolist()):
            rows.append({"image": str(paths[i]), "top": [{"class": classnames[k], "prob": v} for k, v in zip(c, p)]})
    return Predictions(rows, skipped)


def format_rows(rows: list[dict], suffix: str) -> str:
    """CSV (image, class_1, prob_1, ..., class_k, prob_k) or JSON lines."""
    if suffix == ".jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    k = len(rows[0]["top"]) if rows else 0
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image"] + [f"{what}_{i + 1}" for i in range(k) for what in ("class", "prob")])
    for r in rows:
        writer.writerow([r["image"]] + [x for t in r["top"] for x in (t["class"], f"{t['prob']:.6f}")])
    return buf.getvalue()


def write_predictions(rows: list[dict], out: Path) -> Path:
    return atomic.write_text(out, format_rows(rows, out.suffix))
