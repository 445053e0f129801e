"""Evaluating R fitted runs from one cached test set against re-encoding the test images for every run.

    HF_HUB_OFFLINE=1 python benchmarks/eval_speed.py [--test-size 1000] [--train-size 1000] [--seeds 3]

Self-contained: in a temporary folder it writes a small config over the generated world (the `[[datasets]]`,
`[clip]` and the `cnn` `[[encoders]]` tables of the repository's pipeline.toml, with smaller splits), runs
`pipeline extract` and `pipeline fit` (variants mse and lstsq, several seeds: R = 2 x seeds runs) through
the CLI, then measures side by side in this one process:

  (a) cached: `zoomshot.evaluate.scoring.run_evaluate(cfg)`, i.e. every run's map applied to the cached
      test features, scored against the cached class embeddings (plus the CLIP row and the JSON files);
  (b) re-encode: what CLIP_benchmark does per model: for every run, the encoder runs again over the test
      images (decoded by the dataset, the encoder's own transform, batches of 128, inference mode), then
      the same map and the same scoring (cached CLIP test features as the teacher, cached class embeddings).

Building the encoder and loading class embeddings are kept out of (b)'s time, so the ratio is a lower
bound of the saving. Both sides use the same torch thread count (--threads, default 1: on a busy shared
CPU more threads than free cores slow torch down several-fold) and are interleaved; each time is the
median of --repeats measurements. (b)'s top-1 is checked against (a)'s (the cache is float16, so tiny
differences are possible). Prints both times and the speed-up; appends a JSON line to
benchmarks/results/eval_speed.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import tomli_w
import torch

from zoomshot.cache import layout, store, timestamps
from zoomshot.cache.runs import Maps
from zoomshot.cache.zero_shot import cosine_similarities
from zoomshot.cli import config as C
from zoomshot.evaluate.metrics import MetricAccumulator, class_embeddings
from zoomshot.evaluate.scoring import open_runs, run_evaluate
from zoomshot.extract.datasets import open_split
from zoomshot.extract.encoders import build_encoder

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "eval_speed.jsonl"
ENCODER, DATASET, TEST = "cnn", "shapes", "shapes:test"
BATCH = 128


def write_config(work: Path, test_size: int, train_size: int, seeds: int, epochs: int) -> Path:
    base = tomllib.loads((ROOT / "pipeline.toml").read_text())
    datasets = [
        {**d, "options": {**d.get("options", {}), "train_size": train_size, "test_size": test_size}}
        for d in base["datasets"]
        if d["kind"] == "shapes"
    ]
    encoder = next(e for e in base["encoders"] if e["name"] == ENCODER)
    out = work / "out"
    config = {
        "paths": {k: str(out / k.removesuffix("_dir")) for k in ("cache_dir", "runs_dir", "results_dir", "report_dir")},
        "clip": base["clip"],
        "encoders": [encoder],
        "datasets": datasets,
        "extract": {"splits": ["shapes:train", TEST], "batch_size": BATCH, "device": "cpu"},
        "fit": {
            "train": ["shapes:train"],
            "encoders": [ENCODER],
            "variants": ["mse", "lstsq"],
            "fractions": [1.0],
            "epochs": [epochs],
            "seeds": list(range(seeds)),
            "device": "cpu",
            "workers": 2,
        },
        "evaluate": {"test": [TEST]},
    }
    path = work / "pipeline.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def pipeline(stage: str, config: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    cli = [sys.executable, "-c", "from zoomshot.cli.main import main; main()"]  # the `pipeline` command
    subprocess.run(
        [*cli, stage, "--config", str(config)], check=True, env=env, cwd=config.parent, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


# ---- (b): re-encode the test images for every run ------------------------------------------------------


def encode_test_set(encoder, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every test image through the encoder's transform and forward pass, in dataset order."""
    feats, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(dataset), BATCH):
            items = [dataset[i] for i in range(start, min(start + BATCH, len(dataset)))]
            batch = torch.stack([encoder.transform(img) for img, _ in items])
            feats.append(encoder.encode_image(batch).float())
            labels.extend(int(y) for _, y in items)
    return torch.cat(feats), torch.tensor(labels)


def reencode_evaluate(cfg: C.Config, runs: list[Path]) -> tuple[float, dict[str, float]]:
    """Seconds for R re-encoding evaluations, and each run's top-1."""
    project = cfg.project
    encoder = build_encoder(project.encoder(ENCODER).spec(), "cpu")
    dataset = open_split(project.dataset(DATASET).spec(), "test").dataset
    text = store.read_text(layout.class_text_path(project, DATASET))
    class_emb = class_embeddings(
        torch.from_numpy(text.embeddings), torch.from_numpy(text.class_of_prompt), len(text.classnames)
    )
    clip = store.read_features(layout.feature_path(project, cfg.clip.name, TEST), None)
    if not np.array_equal(clip.index, np.arange(len(dataset))):
        raise SystemExit("the cached test split is not the whole split in order; extract fraction 1.0")
    teacher = cosine_similarities(torch.from_numpy(clip.features), class_emb)
    acc1 = {}
    start = time.perf_counter()
    for run in runs:
        feats, labels = encode_test_set(encoder, dataset)
        acc = MetricAccumulator(class_emb.shape[0])
        acc.update(cosine_similarities(Maps.load(run / "maps.safetensors").to_clip(feats), class_emb), labels, teacher)
        acc1[run.name] = acc.compute()["acc1"]
    return time.perf_counter() - start, acc1


def cached_evaluate(cfg: C.Config) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    runs, _ = open_runs(cfg.project, None, say=lambda _msg: None)
    written = run_evaluate(cfg.project, cfg.evaluate, runs, say=lambda _msg: None, progress=False).written
    seconds = time.perf_counter() - start
    results = [json.loads(p.read_text()) for p in written]
    return seconds, {r["run"]: r["metrics"]["acc1"] for r in results if r["method"] != "clip"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3, help="R = 2 variants x seeds runs")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="each measurement's median over this many")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of both measurements (1: stable on a shared, busy CPU, where "
        "more threads than free cores slow torch down several-fold)",
    )
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory(prefix="eval_speed-") as tmp:
        config = write_config(Path(tmp), args.test_size, args.train_size, args.seeds, args.epochs)
        t_extract, t_fit = pipeline("extract", config), pipeline("fit", config)
        cfg = C.load(config)
        runs = [run.dir for run, _ in open_runs(cfg.project, None, say=print)[0]]
        torch.set_num_threads(args.threads)
        cached, reencode = [], []
        for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits both sides
            cached.append(cached_evaluate(cfg))
            reencode.append(reencode_evaluate(cfg, runs))
    (cached_s, cached_acc), (reencode_s, reencode_acc) = (
        (statistics.median(t for t, _ in m), m[-1][1]) for m in (cached, reencode)
    )
    diff = max(abs(cached_acc[k] - reencode_acc[k]) for k in reencode_acc)
    ratio = reencode_s / cached_s
    print(
        f"setup: extract {t_extract:.1f} s, fit {t_fit:.1f} s; R = {len(runs)} runs on {args.test_size} "
        f"test images ({ENCODER}: {cfg.project.encoder(ENCODER).model}), torch threads {torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )
    for name, seconds in (
        ("(a) cached evaluation (run_evaluate):    ", cached_s),
        ("(b) re-encode test images for every run: ", reencode_s),
    ):
        print(f"{name}{seconds:8.3f} s  ({1000 * seconds / len(runs):.1f} ms/run)")
    print(f"speed-up of the cache: {ratio:.1f}x  (max |top-1 difference| between (a) and (b): {diff:.4f})")
    record = {
        "date": timestamps.now(),
        "runs": len(runs),
        "test_size": args.test_size,
        "train_size": args.train_size,
        "encoder": cfg.project.encoder(ENCODER).model,
        "cached_s": round(cached_s, 4),
        "reencode_s": round(reencode_s, 4),
        "speedup": round(ratio, 2),
        "max_acc1_diff": diff,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
