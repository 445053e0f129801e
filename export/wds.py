"""`pipeline export-wds DATASET:SPLIT`: a cached split's images in CLIP_benchmark's local webdataset layout
(`clip_benchmark.datasets.builder.build_wds_dataset`), so `--dataset wds/NAME --dataset_root OUT` reads it:

    <out>/<split>/0.tar, 1.tar, ...   one sample per image: <key>.png (or .webp, lossless) and <key>.cls (label)
    <out>/<split>/nshards.txt          the number of shards
    <out>/classnames.txt               one class name a line, in label order
    <out>/zeroshot_classification_templates.txt   the config's templates, one `{c}` template a line

The samples are the rows of the split's CLIP cache file, in its order: the extracted subset without the
images extraction skipped as unreadable, so CLIP_benchmark scores the very images `pipeline evaluate`
scores. Each is decoded at full size, converted to RGB as extraction converts it (`extract/decode.py`
`to_rgb`) and stored losslessly. Those are the pixels the features were computed from wherever extraction
decoded at full size on the CPU: every PNG (the world's images) and every image extracted with
`[extract] jpeg_draft = false` and the GPU options off. The default `jpeg_draft` decodes a large JPEG at
1/2, 1/4 or 1/8 scale inside the IDCT, and `gpu_preprocess` / `gpu_decode` resample on the GPU: there
CLIP_benchmark sees slightly different pixels of the same images, and the command says for how many.
The folder is written beside its target and renamed into place; an existing folder is never overwritten.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from zoomshot.cache import atomic, layout, store
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.outputs import check_out_folder
from zoomshot.cache.settings import Project, parse_ref
from zoomshot.extract.datasets import open_split
from zoomshot.extract.decode import draft_scale, to_rgb
from zoomshot.extract.prompts import load_templates

IMAGE_FORMATS = {"png": {"format": "png"}, "webp": {"format": "webp", "lossless": True}}


def _encoded(image, image_format: str) -> bytes:
    buf = io.BytesIO()
    to_rgb(image).save(buf, **IMAGE_FORMATS[image_format])
    return buf.getvalue()


def _other_pixels(preprocess: dict, drafted: int, n: int) -> str | None:
    """What says that the features came from other pixels than the written ones, or None."""
    notes = (
        [f"{drafted} of {n} images are JPEGs that extraction decoded at reduced size ([extract] jpeg_draft)"]
        if drafted
        else []
    )
    if {"gpu_preprocess", "gpu_decode"} & set(preprocess.get("pixels", {})):
        notes.append("extraction resized them on the GPU ([extract] gpu_preprocess / gpu_decode)")
    if not notes:
        return None
    return (
        f"export-wds: {' and '.join(notes)}; they are written decoded at full size, so CLIP_benchmark's "
        f"numbers can differ slightly from `pipeline evaluate`'s (extract with those settings off for the "
        f"same pixels)"
    )


def write_wds(
    project: Project,
    ref: str,
    out: Path,
    shard_size: int = 10_000,
    image_format: str = "png",
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> int:
    """Write split `ref` to `out`; returns the number of samples. Says when the features were computed from
    other pixels than the written ones (module docstring)."""
    import webdataset

    name, split = parse_ref(ref)
    cache_file = layout.feature_path(project, project.clip.name, ref)
    if not cache_file.exists():
        raise PipelineError(
            f"{ref} is not in the cache ({cache_file.name} is missing): run `pipeline extract` "
            f"with it in [extract] splits first"
        )
    with store.open_complete(cache_file) as f:
        index, labels = f["index"][:], f["labels"][:]
        preprocess = json.loads(f.attrs.get("preprocess", "{}"))  # absent from imported features
    if (labels < 0).any():
        raise PipelineError(
            f"{ref} has {int((labels < 0).sum())} rows without a label: CLIP_benchmark's "
            f"classification needs every label"
        )
    check_out_folder(out)
    data = open_split(project.dataset(name).spec(), split)
    templates = load_templates(project.clip.templates, Path(project.clip.templates_file))
    drafted = 0
    with atomic.replacing(out) as tmp:
        (tmp / split).mkdir(parents=True)
        sink = webdataset.ShardWriter(str(tmp / split / "%d.tar"), maxcount=shard_size, verbose=0)
        with sink:
            for i, label in tqdm(
                zip(index.tolist(), labels.tolist()),
                total=len(index),
                unit="img",
                desc=f"write {ref}",
                disable=not progress,
            ):
                try:
                    image = data.dataset[i][0]
                    payload = _encoded(image, image_format)
                    drafted += image.format == "JPEG" and draft_scale(image.size, preprocess.get("jpeg_draft_size")) > 1
                except (OSError, ValueError, SyntaxError) as e:  # what PIL raises on corrupt files
                    raise PipelineError(
                        f"image {i} of {ref} cannot be read now ({e}): extract the split again"
                    ) from None
                sink.write({"__key__": f"s{i:08d}", image_format: payload, "cls": label})
            shards = sink.shard
        (tmp / split / "nshards.txt").write_text(f"{shards}\n")
        (tmp / "classnames.txt").write_text("".join(f"{c}\n" for c in data.classnames))
        (tmp / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in templates))
    if note := _other_pixels(preprocess, drafted, len(index)):
        say(note)
    return len(index)
