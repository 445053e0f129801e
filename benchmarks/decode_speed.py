"""JPEG decode at real sizes: the pipeline's decode + transform against a plain PIL loop (per core), and
the whole extraction stage against min(decode-only, bare forward) with the same workers, side by side
in one run.

    python benchmarks/decode_speed.py [--images 2000] [--batch 64] [--workers -1] [--device cpu|cuda]
                                      [--real-size] [--gpu-preprocess] [--gpu-decode] [--data DIR]

The images: an ImageNet-like folder of JPEGs (500x375, quality 90, 10 class folders) with
natural-image statistics (1/f amplitude spectrum, coloured, with a few hard-edged shapes), so the
entropy decoder works as on photos; made once under --data (default: a temporary folder).

* per core (one process): `Image.open().convert("RGB").resize((S, S))` against the pipeline's
  `Decoded` (reduced-size JPEG decoding, then every encoder's own transform to a normalized tensor),
  and against the same decode to uint8 alone (what is left on the CPU with `gpu_preprocess`);
* with the stage's DataLoader workers: decode-only images/s, the encoders' bare forward images/s on
  pre-decoded batches, and the stage (`extract_split`: decode, forward, float16 HDF5 writes); the stage
  should reach >= 0.9 of the smaller of the two (they overlap).
`--real-size`: CLIP ViT-B-16 and timm resnet50 / vit_base_patch16_224 (random weights) at 224 px; the
default: the world's tiny models at 64 px. The last two lines are for scripts:
`decode speed-up vs plain PIL: <x>x` and `stage / min(decode, forward): <r>`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from extract_speed import REAL, TINY, sync, timed  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from world import append_result  # noqa: E402  (benchmarks/world.py, beside this script)

from zoomshot.cache import layout  # noqa: E402
from zoomshot.cli import config as C  # noqa: E402
from zoomshot.extract.datasets import open_split  # noqa: E402
from zoomshot.extract.decode import first_resize  # noqa: E402
from zoomshot.extract.encoders import build_encoder  # noqa: E402
from zoomshot.extract.runner import Decoded, SplitJob, _autocast, _loader, _pixel_path, extract_split, loader_workers  # noqa: E402
from zoomshot.extract.shards import batch_plan  # noqa: E402


def natural_image(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """1/f-spectrum colour noise (the statistics of photos) with a few hard-edged shapes on top."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    amp = 1 / np.maximum(np.hypot(fx, fy), 1 / max(width, height))
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, amp.shape)
        x = np.fft.irfft2(amp * np.exp(1j * phase), s=(height, width))
        channels.append((x - x.mean()) / x.std())
    mix = rng.normal(size=(3, 3)) * 0.5 + np.eye(3)
    pixels = np.clip(np.einsum("ij,jhw->hwi", mix, np.stack(channels)) * 40 + 128, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        box = [x0, y0, x0 + rng.integers(20, 200), y0 + rng.integers(20, 150)]
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def make_folder(root: Path, n: int) -> list[Path]:
    """`root/train/class<k>/<i>.jpg`, made once (kept when it holds n images already)."""
    paths = [root / "train" / f"class{i % 10}" / f"{i:05d}.jpg" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(0)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        natural_image(rng).save(p, quality=90)
    return paths


def per_second(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--per-core-images", type=int, default=500, help="images of the one-process decode loops")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: the stage's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--real-size", action="store_true")
    ap.add_argument("--gpu-preprocess", action="store_true")
    ap.add_argument("--gpu-decode", action="store_true")
    ap.add_argument("--data", default="", help="folder for the generated JPEGs (kept and reused; default: temporary)")
    args = ap.parse_args()
    models = REAL if args.real_size else TINY
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(args.data or tmp) / f"jpegs-{args.images}"
        t0 = time.perf_counter()
        paths = make_folder(data_root, args.images)
        print(f"{len(paths)} JPEGs of 500x375 under {data_root} ({time.perf_counter() - t0:.0f} s to make or find)")
        cfg = C.from_dict(
            {
                "paths": {"cache_dir": str(Path(tmp) / "cache")},
                "clip": models["clip"],
                "encoders": models["encoders"],
                "datasets": [
                    {"name": "jpegs", "kind": "imagefolder", "root": str(data_root), "options": {"classnames_file": ""}}
                ],
                "extract": {
                    "splits": ["jpegs:train"],
                    "batch_size": args.batch,
                    "num_workers": args.workers,
                    "device": args.device,
                    "gpu_preprocess": args.gpu_preprocess,
                    "gpu_decode": args.gpu_decode,
                },
            }
        )
        project, settings = cfg.project, cfg.extract
        names = [cfg.clip.name] + [e.name for e in cfg.encoders]
        encoders = {n: build_encoder(project.encoder(n).spec(), args.device) for n in names}
        dataset = open_split(project.dataset("jpegs").spec(), "train").dataset
        transforms = list({repr(encoders[n].transform): encoders[n].transform for n in names}.values())
        sizes = [first_resize(t) for t in transforms]
        side = max(s[0] for s in sizes)
        k = min(args.per_core_images, args.images)

        # ---- per core: one process, no workers
        t_plain = timed(lambda: [Image.open(p).convert("RGB").resize((side, side)) for p in paths[:k]])
        one = Decoded(dataset, np.arange(k), transforms, sizes)
        t_ours = timed(lambda: [one[i] for i in range(k)])
        full = Decoded(dataset, np.arange(k), transforms, [None] * len(transforms))
        t_full = timed(lambda: [full[i] for i in range(k)])
        uint8 = Decoded(dataset, np.arange(k), transforms, sizes, pixels=True)  # what gpu_preprocess leaves
        t_uint8 = timed(lambda: [uint8[i] for i in range(k)])

        # ---- with the stage's workers
        pixels = args.gpu_preprocess or args.gpu_decode
        indices = np.arange(args.images)
        plan = [range(a, b) for a, b in batch_plan(indices, args.batch)]

        def decoded_batches():
            return _loader(
                Decoded(dataset, indices, transforms, sizes, pixels, args.gpu_decode), plan, settings, args.device
            )

        t_decode = timed(lambda: [None for _ in decoded_batches()])
        kept = []
        for _, _, _, views, _ in decoded_batches():
            kept.append(views)
            if len(kept) == 4:
                break
        view_of = {n: [repr(t) for t in transforms].index(repr(encoders[n].transform)) for n in names}
        on_device = _pixel_path(settings, transforms, args.device)
        if on_device is not None:
            kept = [on_device(v, np.arange(len(v)), np.zeros(len(v), np.int64), [])[0] for v in kept]

        def bare():
            with torch.inference_mode(), _autocast(args.device):
                for b in range(len(plan)):
                    views = kept[b % len(kept)]
                    for n in names:
                        encoders[n].encode_image(views[view_of[n]][: len(plan[b])].to(args.device, non_blocking=True))
            sync(args.device)

        bare()  # warm-up (allocator, cuDNN autotune)
        t_bare = timed(bare)
        job = SplitJob("jpegs:train", {n: layout.feature_path(project, n, "jpegs:train") for n in names})
        t_stage = timed(
            lambda: extract_split(project, settings, job, encoders, args.device, progress=False, say=lambda line: None)
        )
    n = args.images
    rec = {
        "device": args.device,
        "real_size": args.real_size,
        "images": n,
        "per_core_images": k,
        "batch": args.batch,
        "workers": loader_workers(args.workers),
        "cores": len(os.sched_getaffinity(0)),
        "gpu_preprocess": args.gpu_preprocess,
        "gpu_decode": args.gpu_decode,
        "encoders": names,
        "input_sizes": sizes,
        "plain_pil_img_s_core": per_second(k, t_plain),
        "pipeline_img_s_core": per_second(k, t_ours),
        "pipeline_no_draft_img_s_core": per_second(k, t_full),
        "uint8_decode_img_s_core": per_second(k, t_uint8),
        "decode_img_s": per_second(n, t_decode),
        "forward_img_s": per_second(n, t_bare),
        "stage_img_s": per_second(n, t_stage),
        "threads": torch.get_num_threads(),
    }
    rec["speedup_vs_plain"] = rec["pipeline_img_s_core"] / rec["plain_pil_img_s_core"]
    rec["stage_vs_min"] = rec["stage_img_s"] / min(rec["decode_img_s"], rec["forward_img_s"])
    print(
        f"per core: plain PIL open+convert+resize to {side} px {rec['plain_pil_img_s_core']:.0f} img/s; pipeline "
        f"decode + {len(transforms)} transform(s) {rec['pipeline_img_s_core']:.0f} img/s "
        f"(without reduced-size decoding {rec['pipeline_no_draft_img_s_core']:.0f} img/s; decode to uint8 only, "
        f"the CPU's share with gpu_preprocess, {rec['uint8_decode_img_s_core']:.0f} img/s)"
    )
    print(
        f"with {rec['workers']} worker(s), batch {args.batch}, {args.device}: decode only {rec['decode_img_s']:.0f} "
        f"img/s, bare forward of {len(names)} encoders {rec['forward_img_s']:.0f} img/s, extraction stage "
        f"{rec['stage_img_s']:.0f} img/s"
    )
    append_result("decode_speed", rec)
    print(f"decode speed-up vs plain PIL: {rec['speedup_vs_plain']:.2f}x")
    print(f"stage / min(decode, forward): {rec['stage_vs_min']:.2f}")


if __name__ == "__main__":
    main()
