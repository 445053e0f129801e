"""Images/s of the extraction stage against the encoders' bare forward passes, and the decode cost of
K encoders in one pass against K separate passes, measured side by side in one run.

    python benchmarks/extract_speed.py [--images 2048] [--batch 128] [--device cpu|cuda] [--real-size]

* bare: every encoder's forward pass over pre-decoded, pre-transformed batches (no decode, no I/O);
* stage: `extract_split` over the same images with all encoders (decode once per batch, a transform per
  encoder, forward, float16 HDF5 writes); ratio = stage images/s / bare images/s (target >= 0.9);
* decode: the DataLoader pass that decodes for all K encoders at once against K passes (target
  <= 1/K + 0.1), and the same with each encoder's transform included (the transforms are per-encoder
  work either way, so that ratio is bounded below by the transforms' share).
`--real-size` uses CLIP ViT-B-16 and timm resnet50 / vit_base_patch16_224 (random weights) at 224 px;
the default uses the project's tiny world models. One JSON line goes to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from zoomshot.cache import layout, timestamps  # noqa: E402
from zoomshot.cli import config as C  # noqa: E402
from zoomshot.extract.datasets import open_split  # noqa: E402
from zoomshot.extract.decode import first_resize  # noqa: E402
from zoomshot.extract.encoders import build_encoder  # noqa: E402
from zoomshot.extract.runner import Decoded, SplitJob, _autocast, collate, extract_split  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "extract_speed.jsonl"
TINY = {
    "clip": {"model": "zoomshot-tiny-clip"},
    "encoders": [
        {
            "name": "cnn",
            "model": "test_resnet",
            "options": {"pretrained_cfg_overlay": {"input_size": [3, 64, 64], "crop_pct": 1.0}},
        },
        {
            "name": "vit",
            "model": "test_vit",
            "options": {"img_size": 64, "pretrained_cfg_overlay": {"input_size": [3, 64, 64], "crop_pct": 1.0}},
        },
    ],
}
REAL = {
    "clip": {"model": "ViT-B-16"},
    "encoders": [{"name": "resnet50", "model": "resnet50"}, {"name": "vit-b16", "model": "vit_base_patch16_224"}],
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--real-size", action="store_true")
    args = ap.parse_args()
    models = REAL if args.real_size else TINY
    image_size = 224 if args.real_size else 64
    with tempfile.TemporaryDirectory() as tmp:
        cfg = C.from_dict(
            {
                "paths": {"cache_dir": tmp},
                "clip": models["clip"],
                "encoders": models["encoders"],
                "datasets": [
                    {
                        "name": "shapes",
                        "kind": "shapes",
                        "options": {"train_size": args.images, "image_size": image_size},
                    }
                ],
                "extract": {
                    "splits": ["shapes:train"],
                    "batch_size": args.batch,
                    "num_workers": args.workers,
                    "device": args.device,
                },
            }
        )
        project = cfg.project
        names = [cfg.clip.name] + [e.name for e in cfg.encoders]
        encoders = {n: build_encoder(project.encoder(n).spec(), args.device) for n in names}
        data = open_split(project.dataset("shapes").spec(), "train").dataset
        indices = torch.arange(args.images).numpy()
        transforms = [encoders[n].transform for n in names]

        def loader(tfs):
            return DataLoader(
                Decoded(data, indices, tfs, [first_resize(t) for t in tfs]),
                batch_size=args.batch,
                num_workers=args.workers,
                collate_fn=collate,
            )

        batches = [views for _, _, _, views, _ in loader(transforms)]

        def bare():
            with torch.inference_mode(), _autocast(args.device):
                for views in batches:
                    for i, n in enumerate(names):
                        encoders[n].encode_image(views[i].to(args.device))
            sync(args.device)

        bare()  # warm-up (allocator, cuDNN autotune)
        t_bare = timed(bare)
        job = SplitJob("shapes:train", {n: layout.feature_path(project, n, "shapes:train") for n in names})
        t_stage = timed(lambda: extract_split(project, cfg.extract, job, encoders, args.device, progress=False))
        t_one = timed(lambda: [None for _ in loader(transforms)])
        t_sep = sum(timed(lambda tf=tf: [None for _ in loader([tf])]) for tf in transforms)
        t_dec_one = timed(lambda: [None for _ in loader([])])
        t_dec_sep = sum(timed(lambda: [None for _ in loader([])]) for _ in transforms)
    k = len(names)
    rec = {
        "benchmark": "extract_speed",
        "date": timestamps.now(),
        "device": args.device,
        "real_size": args.real_size,
        "images": args.images,
        "batch": args.batch,
        "encoders": names,
        "bare_img_s": args.images / t_bare,
        "stage_img_s": args.images / t_stage,
        "stage_vs_bare": t_bare / t_stage,
        "decode_one_pass_s": t_one,
        "decode_k_passes_s": t_sep,
        "decode_transform_ratio": t_one / t_sep,
        "decode_ratio": t_dec_one / t_dec_sep,
        "decode_target": 1 / k + 0.1,
        "threads": torch.get_num_threads(),
    }
    print(
        f"bare forward passes: {rec['bare_img_s']:.0f} img/s; extract stage: {rec['stage_img_s']:.0f} img/s "
        f"-> ratio {rec['stage_vs_bare']:.2f} (target >= 0.9)"
    )
    print(
        f"decode for {k} encoders: one pass {t_dec_one:.2f} s vs {k} passes {t_dec_sep:.2f} s "
        f"-> ratio {rec['decode_ratio']:.2f} (target <= {rec['decode_target']:.2f})"
    )
    print(
        f"decode + per-encoder transforms: one pass {t_one:.2f} s vs {k} passes {t_sep:.2f} s "
        f"-> ratio {rec['decode_transform_ratio']:.2f} (the transforms are per-encoder work in both)"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
