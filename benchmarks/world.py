"""The generated world, extracted once through the real `pipeline extract`, for the method studies
(`loss_weights.py`, `claims.py`): cached features in, fits and top-1 out, in this process.

A study folder (`--work`, default a temporary one) holds a pipeline.toml made from the repository's (the
shipped tiny CLIP and encoders) with the sizes asked for, and its cache; a second run with the same
folder and sizes extracts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tomli_w
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from zoomshot.cache import layout, store, timestamps  # noqa: E402
from zoomshot.cache.runs import Maps  # noqa: E402
from zoomshot.cache.subsets import subset_indices  # noqa: E402
from zoomshot.cli.config import Config, load  # noqa: E402
from zoomshot.evaluate.scoring import load_classes  # noqa: E402
from zoomshot.fit.methods import fit_method  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


#: a training split of the world in its second style (`extract/world.py` STYLES), of other images (seed 1)
SKETCH_TRAIN = "shapes-sketch:train"


def extract(
    work: Path, train: int, test: int, per_class: int, encoders: Iterable[str] = ("cnn", "vit"), sketch_train: int = 0
) -> Config:
    """The world (train / test splits and a name-only support set of `per_class` images a class, in the
    sketch style) extracted into `work` with CLIP and `encoders`, and with `sketch_train` > 0 also
    `SKETCH_TRAIN`, that many training images in the sketch style; returns the config."""
    work.mkdir(parents=True, exist_ok=True)
    base = tomllib.loads((ROOT / "pipeline.toml").read_text())
    world = {"seed": 0, "image_size": 64}
    datasets = [
        {"name": "shapes", "kind": "shapes", "options": {"train_size": train, "test_size": test, **world}},
        {
            "name": "shapes-sus",
            "kind": "shapes-support",
            "options": {"per_class": per_class, **world, "style": "sketch"},
        },
    ]
    splits = ["shapes:train", "shapes:test", "shapes-sus:train"]
    if sketch_train:
        datasets.append(
            {
                "name": "shapes-sketch",
                "kind": "shapes",
                "options": {"train_size": sketch_train, "test_size": 0, "seed": 1, "image_size": 64, "style": "sketch"},
            }
        )
        splits.append(SKETCH_TRAIN)
    config = {
        "paths": {
            k: str(work / "out" / k.removesuffix("_dir"))
            for k in ("cache_dir", "runs_dir", "results_dir", "report_dir")
        },
        "clip": base["clip"],
        "encoders": [e for e in base["encoders"] if e["name"] in encoders],
        "datasets": datasets,
        "extract": {"splits": splits, "batch_size": 256, "device": "cpu"},
    }
    path = work / "pipeline.toml"
    path.write_text(tomli_w.dumps(config))
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from zoomshot.cli.main import main; main()",
            "extract",
            "--no-progress",
            "--config",
            str(path),
        ],
        check=True,
        cwd=work,
        stdout=subprocess.DEVNULL,
    )
    return load(path)


class World:
    """Cached features of the world, read once; fits and scores in this process."""

    def __init__(self, cfg: Config):
        self.project = cfg.project
        self.classes = load_classes(layout.class_text_path(self.project, "shapes"))
        self.prompts = torch.from_numpy(store.read_text(layout.classfree_text_path(self.project)).embeddings)
        self._features: dict[tuple[str, str], store.FeatureFile] = {}

    def features(self, encoder: str, ref: str) -> store.FeatureFile:
        if (encoder, ref) not in self._features:
            self._features[encoder, ref] = store.read_features(layout.feature_path(self.project, encoder, ref))
        return self._features[encoder, ref]

    def pairs(self, encoder: str, refs: list[str], fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-aligned (source, CLIP) features of a seeded `fraction` of each split of `refs`, together."""
        s_parts, t_parts = [], []
        for ref in refs:
            source, clip = self.features(encoder, ref), self.features(self.project.clip.name, ref)
            n = len(source.features)
            rows = subset_indices(n, fraction, seed)
            s_parts.append(source.features[rows])
            t_parts.append(clip.features[rows])
        return torch.from_numpy(np.concatenate(s_parts)), torch.from_numpy(np.concatenate(t_parts))

    def fit(self, method: str, params: dict, encoder: str, refs: list[str], fraction: float, seed: int) -> Maps:
        return self.fit_pairs(method, params, *self.pairs(encoder, refs, fraction, seed), seed)

    def fit_pairs(
        self, method: str, params: dict, s: torch.Tensor, t: torch.Tensor, seed: int, with_history: bool = False
    ) -> Maps | tuple[Maps, list[dict]]:
        """The maps of `method` fitted on row-aligned (source, CLIP) rows; with their per-epoch losses
        when `with_history`."""
        maps, history = fit_method(method, s, t, self.prompts, params, seed, "cpu")
        return (maps, history) if with_history else maps

    def top1(self, maps: Maps | None, encoder: str, ref: str = "shapes:test") -> float:
        """Zero-shot top-1 of `maps` (None: CLIP itself) on `ref`."""
        test = self.features(encoder if maps is not None else self.project.clip.name, ref)
        x = torch.from_numpy(test.features)
        x = maps.to_clip(x) if maps is not None else x
        pred = (F.normalize(x, dim=-1) @ self.classes.emb.T).argmax(-1)
        return float((pred == torch.from_numpy(test.labels)).float().mean())


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pct(values: list[float]) -> str:
    """'82.3 ± 0.4' (top-1 in %, mean ± sample std over seeds)."""
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def arguments(doc: str, quick: str, **flags: str) -> argparse.Namespace:
    """The options every study takes: --quick, --seeds, --work, and a switch `--NAME` for each of
    `flags` (NAME: its help); torch set to the machine's 2 cores."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick)
    for name, text in flags.items():
        ap.add_argument(f"--{name}", action="store_true", help=text)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", type=Path, help="study folder (kept; default: a temporary one)")
    torch.set_num_threads(2)
    return ap.parse_args()


def append_result(benchmark: str, record: dict) -> None:
    """One JSON line in benchmarks/results/<benchmark>.jsonl."""
    path = Path(__file__).resolve().parent / "results" / f"{benchmark}.jsonl"
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"benchmark": benchmark, "date": timestamps.now(), **record}) + "\n")
