"""Fitting at the paper's scale, on synthetic features brought in through `pipeline cache import`:
seconds per epoch of each loss set against the matmul floor, peak memory, a sweep of 8 runs (features
read from HDF5 once per worker process, not once per run: the read time against the compute time),
and the evaluation of those 8 runs on the test rows.

    python benchmarks/fit_scale.py            # a tenth of the paper's rows (minutes on 2 CPU cores)
    python benchmarks/fit_scale.py --paper    # 256,000 rows (20 % of ImageNet), 50,000 test rows
    python benchmarks/fit_scale.py --paper --device cuda

Shapes: 768 -> 512 dims, 1,000 classes x 80 templates, 1,000 class-free prompts; CLIP features are
class centroids plus noise, the source a fixed linear image of them plus noise (so the maps have
something to find). The matmul floor is fit_speed.py's: the bare GEMMs of an MSE epoch; FLOPs per
epoch are counted as there. One JSON line goes to benchmarks/results/fit_scale.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import tomli_w  # noqa: E402
import torch  # noqa: E402
from fit_speed import matmul_epoch_seconds, ours_epoch_seconds  # noqa: E402
from world import append_result  # noqa: E402  (benchmarks/world.py, beside this script)

from zoomshot.cache import store  # noqa: E402
from zoomshot.cli.main import main as pipeline_main  # noqa: E402
from zoomshot.fit.trainer import TrainConfig, batch_for  # noqa: E402

LOSS_SETS = {"mse": dict(w_cyc=0, w_cyc_text=0, w_kd=0), "mse+cyc": dict(w_kd=0), "mse+cyc+kd-lm": {}}


def config(epochs: int, device: str, workers: int) -> dict:
    """Imported CLIP, source encoder and dataset; a sweep of 4 variants x 2 fractions."""
    return {
        "paths": {"cache_dir": "cache", "runs_dir": "runs", "results_dir": "results", "report_dir": "report"},
        "clip": {"model": "imported", "classfree_prompts": "classfree.txt"},
        "encoders": [{"name": "src", "model": "imported"}],
        "datasets": [{"name": "syn", "kind": "imported"}],
        "fit": {
            "train": ["syn:train"],
            "variants": ["mse", "mse+cyc", "mse+cyc+kd-lm", "lstsq"],
            "fractions": [0.5, 1.0],
            "epochs": [epochs],
            "seeds": [0],
            "device": device,
            "workers": workers,
        },
        "evaluate": {"test": ["syn:test"]},
    }


def pipeline(*args: str) -> float:
    """`pipeline ARGS` in this process (the working directory is the benchmark's folder); seconds."""
    out, start = io.StringIO(), time.perf_counter()
    sys.argv = ["pipeline", *args]
    with contextlib.redirect_stdout(out):
        try:
            pipeline_main()
        except SystemExit as e:
            if e.code not in (0, None):
                raise RuntimeError(f"pipeline {' '.join(args)} exited {e.code}:\n{out.getvalue()}") from None
    return time.perf_counter() - start


def synthetic(
    folder: Path, rows: int, test_rows: int, m: int, d: int, classes: int, templates: int, prompts: int
) -> None:
    """Arrays as .npy files for `pipeline cache import` (float16 on disk is what the cache holds)."""
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(classes, d)).astype(np.float32)
    a = (rng.normal(size=(m, d)) / np.sqrt(d)).astype(np.float32)
    for split, n in (("train", rows), ("test", test_rows)):
        y = rng.integers(0, classes, n)
        t = centroids[y] + 0.9 * rng.normal(size=(n, d)).astype(np.float32)
        s = t @ a.T + 0.05 * rng.normal(size=(n, m)).astype(np.float32)
        np.save(folder / f"clip_{split}.npy", t)
        np.save(folder / f"src_{split}.npy", s)
        np.save(folder / f"y_{split}.npy", y)
    text = np.repeat(centroids, templates, axis=0) + 0.3 * rng.normal(size=(classes * templates, d)).astype(np.float32)
    np.save(folder / "class_text.npy", text)
    (folder / "classnames.txt").write_text("".join(f"class {i}\n" for i in range(classes)))
    mixes = rng.dirichlet(np.ones(classes) * 0.05, size=prompts).astype(np.float32) @ centroids
    np.save(folder / "classfree.npy", mixes)
    (folder / "classfree.txt").write_text("".join(f"prompt {i}\n" for i in range(prompts)))


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--paper", action="store_true", help="the paper's scale: 256,000 rows, 50,000 test rows")
    ap.add_argument("--rows", type=int, default=25_600)
    ap.add_argument("--test-rows", type=int, default=5_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--templates", type=int, default=80)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per timing and per sweep run")
    ap.add_argument("--workers", type=int, default=2, help="sweep workers (threads of one process)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.paper:
        args.rows, args.test_rows = 256_000, 50_000
    m, d, device = 768, 512, torch.device(args.device)
    rec = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "rows": args.rows,
        "test_rows": args.test_rows,
        "width": f"{m}->{d}",
        "classes": args.classes,
        "templates": args.templates,
        "prompts": args.prompts,
        "epochs": args.epochs,
        "workers": args.workers,
    }
    old_cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chdir(folder)
        try:
            t0 = time.perf_counter()
            synthetic(folder, args.rows, args.test_rows, m, d, args.classes, args.templates, args.prompts)
            (folder / "pipeline.toml").write_text(tomli_w.dumps(config(args.epochs, args.device, args.workers)))
            for split in ("train", "test"):
                for enc in ("src", "clip"):
                    pipeline(
                        "cache",
                        "import",
                        f"{enc}_{split}.npy",
                        "--encoder",
                        enc,
                        "--dataset",
                        "syn",
                        "--split",
                        split,
                        "--labels",
                        f"y_{split}.npy",
                        "--classnames",
                        "classnames.txt",
                    )
            pipeline(
                "cache",
                "import",
                "class_text.npy",
                "--text",
                "class-prompts",
                "--dataset",
                "syn",
                "--classnames",
                "classnames.txt",
            )
            pipeline("cache", "import", "classfree.npy", "--text", "classfree")
            rec["import_s"] = time.perf_counter() - t0
            print(
                f"{args.rows:,} train / {args.test_rows:,} test rows {m}->{d}, {args.classes} classes x "
                f"{args.templates} templates, {args.prompts} prompts: made and imported in {rec['import_s']:.0f} s"
            )

            # ---- per loss set: seconds per epoch against the matmul floor, peak memory
            files = sorted((folder / "cache/features").glob("syn_train_*.h5"))
            src = next(p for p in files if "_src_" in p.name)
            clip = next(p for p in files if "_clip_" in p.name)
            t_read = time.perf_counter()
            s, t = store.read_features(src).features, store.read_features(clip).features
            rec["read_once_s"] = time.perf_counter() - t_read
            u = torch.from_numpy(store.read_text(next((folder / "cache/text").glob("classfree_*.h5"))).embeddings)
            s, t = torch.from_numpy(s), torch.from_numpy(t)
            batch = batch_for(args.rows, TrainConfig())
            batches = math.ceil(args.rows / batch)
            n, k = args.rows, args.prompts
            flops = {
                "mse": 4 * n * m * d,
                "mse+cyc": 20 * n * m * d + 10 * k * m * d * batches,
                "mse+cyc+kd-lm": 20 * n * m * d + 10 * k * m * d * batches + 6 * n * d * k,
            }
            floor = matmul_epoch_seconds(n, m, d, batch, device, repeats=3)
            floor_flop_s = 4 * n * m * d / floor
            rec["matmul_floor_s"], rec["matmul_gflop_s"] = floor, floor_flop_s / 1e9
            print(f"matmul floor of an MSE epoch (batch {batch}): {floor:.3f} s ({floor_flop_s / 1e9:.0f} GFLOP/s)")
            rec["loss_sets"] = {}
            for name, weights in LOSS_SETS.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                cfg = TrainConfig(epochs=args.epochs, device=args.device, **weights)
                sec = ours_epoch_seconds(s, t, u if name != "mse" else None, cfg)
                frac = flops[name] / sec / floor_flop_s
                rec["loss_sets"][name] = {
                    "s_per_epoch": sec,
                    "fraction_of_matmul": frac,
                    "floor_multiple": sec / floor,
                    "peak_mb": peak_mb(device),
                }
                print(
                    f"  {name:14s} {sec:7.3f} s/epoch = {sec / floor:5.1f} x the MSE matmul floor; FLOP rate "
                    f"{frac:.2f} of plain matmul; peak memory {peak_mb(device):,.0f} MiB "
                    f"({'GPU' if device.type == 'cuda' else 'process RSS'})"
                )
            del s, t

            # ---- the sweep: 4 variants x 2 fractions, features read once per worker process
            t_sweep = pipeline("fit")
            walls = [json.loads(p.read_text())["wall_time_s"] for p in (folder / "runs").glob("*/run.json")]
            rec.update(
                sweep_runs=len(walls),
                sweep_wall_s=t_sweep,
                sweep_run_s_sum=sum(walls),
                sweep_read_s=rec["read_once_s"],
                sweep_compute_s=sum(walls) - rec["read_once_s"],
            )
            print(
                f"sweep of {len(walls)} runs on {args.workers} thread(s) of one process: {t_sweep:.1f} s wall; "
                f"features read once: {rec['read_once_s']:.1f} s, compute {rec['sweep_compute_s']:.1f} s "
                f"(read once per run would add {(len(walls) - 1) * rec['read_once_s']:.1f} s)"
            )
            t_eval = pipeline("evaluate", "--no-progress")
            rec["evaluate_s"] = t_eval
            print(
                f"evaluate {len(walls)} runs on {args.test_rows:,} test rows x {args.classes} classes: {t_eval:.1f} s"
            )
        finally:
            os.chdir(old_cwd)
    append_result("fit_scale", rec)


if __name__ == "__main__":
    main()
