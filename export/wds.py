"""`pipeline export-wds DATASET:SPLIT`: a cached split's images in CLIP_benchmark's local webdataset layout
(`clip_benchmark.datasets.builder.build_wds_dataset`), so `--dataset wds/NAME --dataset_root OUT` reads it:

    <out>/<split>/0.tar, 1.tar, ...   one sample per image: <key>.png (or .webp, lossless) and <key>.cls (label)
    <out>/<split>/nshards.txt          the number of shards
    <out>/classnames.txt               one class name a line, in label order
    <out>/zeroshot_classification_templates.txt   the config's templates, one `{c}` template a line

The samples are the rows of the split's CLIP cache file, in its order: the extracted subset without the
images extraction skipped as unreadable, so CLIP_benchmark scores the very images `pipeline evaluate`
scores. Images are stored losslessly (the world renders PNG), so both read the same pixels. The folder
is written beside its target and renamed into place; an existing folder is never overwritten.
"""
from __future__ import annotations

import io
from pathlib import Path

from tqdm import tqdm

from zoomshot.cache import atomic, layout, store
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.outputs import check_out_folder
from zoomshot.cache.settings import Project, parse_ref
from zoomshot.extract.datasets import open_split
from zoomshot.extract.prompts import load_templates

IMAGE_FORMATS = {"png": {"format": "png"}, "webp": {"format": "webp", "lossless": True}}


def _encoded(image, image_format: str) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, **IMAGE_FORMATS[image_format])
    return buf.getvalue()


def write_wds(project: Project, ref: str, out: Path, shard_size: int = 10_000, image_format: str = "png",
              progress: bool = True) -> int:
    """Write split `ref` to `out`; returns the number of samples."""
    import webdataset

    name, split = parse_ref(ref)
    cache_file = layout.feature_path(project, project.clip.name, ref)
    if not cache_file.exists():
        raise PipelineError(f"{ref} is not in the cache ({cache_file.name} is missing): run `pipeline extract` "
                            f"with it in [extract] splits first")
    with store.open_complete(cache_file) as f:
        index, labels = f["index"][:], f["labels"][:]
    if (labels < 0).any():
        raise PipelineError(f"{ref} has {int((labels < 0).sum())} rows without a label: CLIP_benchmark's "
                            f"classification needs every label")
    check_out_folder(out)
    data = open_split(project.dataset(name).spec(), split)
    templates = load_templates(project.clip.templates, Path(project.clip.templates_file))
    with atomic.replacing(out) as tmp:
        (tmp / split).mkdir(parents=True)
        sink = webdataset.ShardWriter(str(tmp / split / "%d.tar"), maxcount=shard_size, verbose=0)
        with sink:
            for i, label in tqdm(zip(index.tolist(), labels.tolist()), total=len(index), unit="img",
                                 desc=f"write {ref}", disable=not progress):
                try:
                    image = data.dataset[i][0]
                    payload = _encoded(image, image_format)
                except (OSError, ValueError, SyntaxError) as e:   # what PIL raises on corrupt files
                    raise PipelineError(f"image {i} of {ref} cannot be read now ({e}): extract the split again") \
                        from None
                sink.write({"__key__": f"s{i:08d}", image_format: payload, "cls": label})
            shards = sink.shard
        (tmp / split / "nshards.txt").write_text(f"{shards}\n")
        (tmp / "classnames.txt").write_text("".join(f"{c}\n" for c in data.classnames))
        (tmp / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in templates))
    return len(index)

