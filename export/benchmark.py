"""An exported model in LAION's CLIP_benchmark (the `clip-benchmark` package), without changing it.

`register()` makes `zoomshot` one of its model types, so its own CLI runs an export
(`pipeline clip-benchmark eval --model_type zoomshot --pretrained EXPORT_DIR --dataset wds/NAME ...`),
and `evaluate_classification` calls its `zeroshot_classification.evaluate` on a folder that
`pipeline export-wds` wrote. Frictions of clip-benchmark 1.6.2, handled here and not by patching it:

* it imports `requests` without declaring it: the project pins `requests`; a missing one is one line;
* its `accuracy()` calls `float()` on a one-element array, which numpy 2.4 refuses: when the installed
  function fails on a probe, this process uses `accuracy` below (same definition) in its place;
* its model types are a dict fixed in code: `register()` adds ours at run time;
* its default mixed precision autocasts to bf16 on the CPU: amp here only on CUDA (`--no_amp` added to
  its CLI on a machine without a GPU);
* its CLI's default of 4 DataLoader workers fails on a webdataset of fewer shards (webdataset 1.0's
  empty check stops a worker without a shard): its CLI gets `--num_workers 1` unless one is given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import torch

from zoomshot.cache.errors import PipelineError

from .model import load_model

MODEL_TYPE = "zoomshot"
TASK = "zeroshot_classification"


def _modules() -> tuple[ModuleType, ModuleType]:
    """clip_benchmark's model registry and zero-shot classification module, or one line saying what is missing."""
    try:
        import clip_benchmark.models as models
        from clip_benchmark.metrics import zeroshot_classification
    except ModuleNotFoundError as e:
        if e.name == "requests":
            raise PipelineError(
                "clip-benchmark imports `requests` without declaring it: pip install requests"
            ) from None
        raise PipelineError(
            f"CLIP_benchmark is not installed ({e}): pip install clip-benchmark (the project's test extra pins it)"
        ) from None
    return models, zeroshot_classification


def load_zoomshot(model_name: str, pretrained: str, cache_dir: str | None = None, device: str = "cpu"):
    """CLIP_benchmark's loader signature: `pretrained` is the export folder, `model_name` only a label."""
    return load_model(pretrained, device)


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[float]:
    """CLIP_benchmark's top-k accuracy (torch.topk of the logits), returning Python floats via `.item()`."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def register() -> None:
    """Add the `zoomshot` model type to CLIP_benchmark, and a working `accuracy` where its own fails."""
    models, zeroshot = _modules()
    models.TYPE2FUNC[MODEL_TYPE] = load_zoomshot
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)  # the list its CLI offers as --model_type choices
    try:
        zeroshot.accuracy(torch.eye(5), torch.arange(5), topk=(1,))
    except TypeError:
        zeroshot.accuracy = accuracy


def use_amp(device: str) -> bool:
    return str(device).startswith("cuda")


def evaluate_classification(
    model_dir: str | Path, wds_root: str | Path, split: str = "test", batch_size: int = 64, device: str = "cpu"
) -> dict:
    """CLIP_benchmark's zero-shot classification metrics of an export on a `pipeline export-wds` folder,
    the way its CLI computes them (its loader registry, dataset builder and `evaluate`)."""
    register()
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.models import load_clip

    _, zeroshot = _modules()
    model, transform, tokenizer = load_clip(MODEL_TYPE, Path(model_dir).name, str(model_dir), None, device)
    dataset = build_dataset(
        f"wds/{Path(wds_root).name}", root=str(wds_root), transform=transform, split=split, task=TASK
    )
    loader = torch.utils.data.DataLoader(dataset.batched(batch_size), batch_size=None, shuffle=False)
    return zeroshot.evaluate(
        model, loader, tokenizer, dataset.classes, dataset.templates, device=device, amp=use_amp(device)
    )


def main(args: list[str]) -> None:
    """CLIP_benchmark's own command line with the `zoomshot` model type registered."""
    register()
    from clip_benchmark.cli import main as clip_benchmark_main

    args = list(args)
    if args[:1] == ["eval"]:
        if not torch.cuda.is_available() and "--no_amp" not in args:
            args.append("--no_amp")
        if "--output" not in args:  # its default name holds --pretrained, here a path
            args += ["--output", "{dataset}_{model}_{language}_{task}.json"]
        if "--num_workers" not in args:
            args += ["--num_workers", "1"]
    sys.argv = ["clip_benchmark", *args]
    clip_benchmark_main()
