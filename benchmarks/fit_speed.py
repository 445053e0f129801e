"""Time per epoch of the Zoom-shot trainer against the Linear Aligner's own loop and against bare matmuls.

    python benchmarks/fit_speed.py [--rows 20000] [--big-rows 10000] [--device cpu] [--threads N]

On the same random features, for a small width (256 -> 128) and the paper's (2048 -> 512):
  * reference: Text-to-Concept's LinearRegressionSolver loop (a DataLoader with num_workers=1 over a
    TensorDataset, batch 100, shuffle, SGD, nn.MSELoss, loss.item() per batch, as in their code);
  * ours, MSE only and the full multimodal loss (cycles + PG-KD over a K-prompt set), default TrainConfig
    but for --batch-size;
  * matmul: the same GEMMs as our MSE epoch (forward X W^T and weight gradient G^T X per batch) on
    pre-sliced contiguous tensors, with no gather, loss, autograd or optimizer: the physical floor.
FLOPs per epoch: MSE only = 4 N m d (forward 2 N m d, weight gradient 2 N m d; no input gradient is needed
for data). Full loss, per batch of B rows with K prompts, counting each GEMM as 2 x its multiply-adds and
its backward as 1 (weight gradient) or 2 (weight + input gradient) more of the same: h(s) 2, h_inv(h(s)) 3,
h_inv(t) 2, h(h_inv(t)) 3 units of 2Bmd; the prompt cycle 5 units of 2Kmd; PG-KD student 2 and teacher 1
units of 2BdK: 20 N m d + 10 K m d (batches per epoch) + 6 N d K. Elementwise work is not counted, so the
fraction is a lower bound on how close an epoch runs to the matmul floor.
Each measurement is printed and appended as a JSON line to benchmarks/results/fit_speed.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from zoomshot.cache import timestamps
from zoomshot.fit.spaces import variance_scale
from zoomshot.fit.trainer import TrainConfig, batch_for, train_maps

RESULTS = Path(__file__).resolve().parent / "results" / "fit_speed.jsonl"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_epoch_seconds(s: torch.Tensor, t: torch.Tensor, device: torch.device, epochs: int) -> float:
    """Median seconds per epoch of the Linear Aligner's loop (a fresh DataLoader worker every epoch, as theirs)."""
    s, t = s * variance_scale(s), t * variance_scale(t)
    dataset = torch.utils.data.TensorDataset(s, t)
    loader = torch.utils.data.DataLoader(dataset, batch_size=100, shuffle=True, num_workers=1)
    model = nn.Linear(s.shape[1], t.shape[1]).to(device)
    criterion = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.item()
            loss.backward()
            optimizer.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours_epoch_seconds(s: torch.Tensor, t: torch.Tensor, u: torch.Tensor | None, cfg: TrainConfig) -> float:
    """Median seconds per epoch of train_maps, from epoch-end timestamps (the first epoch is warm-up)."""
    stamps = [time.perf_counter()]
    device = torch.device(cfg.device)

    def stamp(_record: dict) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    train_maps(s, t, u, cfg, on_epoch=stamp)
    return statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))


def matmul_epoch_seconds(n: int, m: int, d: int, batch: int, device: torch.device, repeats: int) -> float:
    """Seconds for the bare GEMMs of one MSE epoch: per batch X W^T and G^T X, on ready contiguous batches."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(min(batch, n - i), m, generator=g).to(device) for i in range(0, n, batch)]
    grads = [torch.randn(x.shape[0], d, generator=g).to(device) for x in batches]
    weight = torch.randn(d, m, generator=g).to(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for x, grad in zip(batches, grads):
            x @ weight.T
            grad.T @ x
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def record(entry: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def run_width(n: int, m: int, d: int, k: int, args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(n, m, generator=g).abs()  # post-ReLU-like source features
    t = torch.randn(n, d, generator=g) + 0.5
    u = torch.randn(k, d, generator=g) + 0.5
    base = {
        "benchmark": "fit_speed",
        "width": f"{m}->{d}",
        "rows": n,
        "prompts": k,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "time": timestamps.now(),
    }
    common = {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device}
    mse_cfg = TrainConfig(**common, w_cyc=0, w_cyc_text=0, w_kd=0)
    full_cfg = TrainConfig(**common)
    batch = batch_for(n, mse_cfg)  # the trainer's batch: at most --batch-size, at least 50 steps
    batches = math.ceil(n / batch)
    flops = {"mse": 4 * n * m * d, "full": 20 * n * m * d + 10 * k * m * d * batches + 6 * n * d * k}

    reference = reference_epoch_seconds(s, t, device, args.reference_epochs)
    floor = matmul_epoch_seconds(n, m, d, batch, device, repeats=max(3, args.epochs))
    floor_flop_s = flops["mse"] / floor
    record({**base, "variant": "reference-dataloader", "batch_size": 100, "s_per_epoch": reference})
    record({**base, "variant": "matmul-floor", "batch_size": batch, "s_per_epoch": floor, "flop_s": floor_flop_s})
    print(
        f"[{m}->{d}, {n} rows, {base['device']}, {base['threads']} threads] reference DataLoader loop "
        f"{reference:.3f} s/epoch; bare matmuls of an MSE epoch {floor:.4f} s ({floor_flop_s / 1e9:.1f} GFLOP/s)"
    )
    for name, cfg, prompts in (("mse", mse_cfg, None), ("full", full_cfg, u)):
        seconds = ours_epoch_seconds(s, t, prompts, cfg)
        flop_s = flops[name] / seconds
        record(
            {
                **base,
                "variant": f"ours-{name}",
                "batch_size": batch,
                "s_per_epoch": seconds,
                "speedup_vs_reference": reference / seconds,
                "flops_per_epoch": flops[name],
                "flop_s": flop_s,
                "fraction_of_matmul": flop_s / floor_flop_s,
            }
        )
        print(
            f"  ours {name:4s}: {seconds:.4f} s/epoch, speed-up {reference / seconds:.1f}x vs reference, "
            f"{flop_s / 1e9:.1f} GFLOP/s = {flop_s / floor_flop_s:.2f} of plain matmul"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000, help="rows at the small width (256 -> 128)")
    parser.add_argument("--big-rows", type=int, default=10000, help="rows at the paper's width (2048 -> 512)")
    parser.add_argument("--prompts", type=int, default=1000, help="size K of the class-free prompt set")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of our trainer per measurement")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="our trainer's batch size")
    parser.add_argument("--reference-epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run_width(args.rows, 256, 128, args.prompts, args)
    run_width(args.big_rows, 2048, 512, args.prompts, args)


if __name__ == "__main__":
    main()
