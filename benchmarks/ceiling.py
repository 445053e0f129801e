"""The linear-probe ceiling: what any linear map from an encoder's features can reach on the world, against
what Zoom-shot's map reaches and CLIP's zero-shot top-1.

A linear probe is a softmax classifier trained WITH the labels on the encoder's cached training features
(multinomial logistic regression, L2 penalty chosen on validation rows, full-batch L-BFGS): an upper bound
for Zoom-shot, whose map never sees a label and classifies through CLIP's text embeddings (a linear map
followed by CLIP's zero-shot head is one linear classifier). CLIP's own probe is shown for comparison, and
the same probe trained on CLIP's zero-shot predictions instead of the labels (no annotation: what a linear
classifier on the encoder can learn from CLIP alone).

    HF_HUB_OFFLINE=1 python benchmarks/ceiling.py [--quick] [--seeds 3] [--work DIR]

The world is the default one (`pipeline.toml`: its 4,000 training and 1,280 test images) with 1,000 more
training images as validation rows (`held_out_world`: a sample depends only on its split and index, so
the first 4,000 are the default world's). Rows: 100 and 4,000 of the 4,000 (the pipeline's nested
seeded subsets); the mapped column is `tuned` `mse+cyc+kd-lm`, 20 epochs. Prints a Markdown table and
appends a JSON line to benchmarks/results/ceiling.jsonl; docs/method.md quotes it.
"""

from __future__ import annotations

import copy
import functools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from world import World, append_result, arguments, extract, mean_std, pct

from zoomshot.cache.runs import Maps
from zoomshot.cache.subsets import subset_indices
from zoomshot.fit.methods import fit_method

TRAIN = 4000  # the default world's training split; the rows after it are the validation rows
VALIDATION = 1000
TEST = 1280  # the default world's test split
PENALTIES = (1e-5, 1e-4, 1e-3, 1e-2)  # the probe's L2 penalties, one chosen on validation


def held_out_world(work: Path) -> World:
    """The default world's splits with VALIDATION more training images (cnn, vit and CLIP features)."""
    return World(extract(work, train=TRAIN + VALIDATION, test=TEST, per_class=1, encoders=("cnn", "vit")))


def train_rows(rows: int, seed: int) -> np.ndarray:
    """The training rows of a fit: the pipeline's seeded nested subset of the default world's split."""
    return subset_indices(TRAIN, rows / TRAIN, seed)


VALIDATION_ROWS = np.arange(TRAIN, TRAIN + VALIDATION)


def tensors(world: World, encoder: str, ref: str, rows: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of `rows` (None: all) of a cached split."""
    f = world.features(encoder, ref)
    assert (f.index == np.arange(len(f.index))).all(), f"{f.path} skipped items: rows are not indices"
    rows = slice(None) if rows is None else rows
    return torch.from_numpy(f.features[rows]), torch.from_numpy(f.labels[rows]).long()


def logistic_probe(z: torch.Tensor, y: torch.Tensor, penalty: float, start: torch.nn.Linear) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised float64 z, from `start` (a copy is trained): mean
    cross-entropy + penalty * ||W||^2, minimised by full-batch L-BFGS with a strong Wolfe line search."""
    probe = copy.deepcopy(start)
    opt = torch.optim.LBFGS(
        probe.parameters(),
        lr=1,
        max_iter=100,
        tolerance_grad=1e-8,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(z), y) + penalty * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def clip_labels(world: World, ref: str, rows: np.ndarray | None) -> torch.Tensor:
    """CLIP's zero-shot predictions on `rows` of a split: labels that use no annotation."""
    t, _ = tensors(world, world.project.clip.name, ref, rows)
    return (F.normalize(t, dim=-1) @ world.classes.emb.T).argmax(-1)


def probe_top1(world: World, encoder: str, rows: np.ndarray, teacher: bool = False) -> tuple[float, float]:
    """Test top-1 of the probe whose penalty scores best on the validation rows, and that penalty.

    `teacher`: train and validate on CLIP's zero-shot predictions instead of the labels (what a linear
    classifier can learn from CLIP without annotations; still scored on the test labels). The penalties
    run strongest first, each starting where the previous one ended (a warm start: the path of solutions
    is continuous), from zero weights."""
    x, _ = tensors(world, encoder, "shapes:train", rows)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)

    def z(ref: str, rows: np.ndarray | None = None, labels: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = tensors(world, encoder, ref, rows)
        return ((a - mean) / std).double(), b if labels else clip_labels(world, ref, rows)

    def top1(probe: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor) -> float:
        with torch.no_grad():
            return float((probe(a).argmax(-1) == b).float().mean())

    train, validation = z("shapes:train", rows, not teacher), z("shapes:train", VALIDATION_ROWS, not teacher)
    test = z("shapes:test")
    probe = torch.nn.Linear(x.shape[1], len(world.classes.emb), dtype=torch.float64)
    torch.nn.init.zeros_(probe.weight), torch.nn.init.zeros_(probe.bias)
    probes = {}
    for penalty in sorted(PENALTIES, reverse=True):
        probes[penalty] = probe = logistic_probe(*train, penalty, probe)
    best = max(PENALTIES, key=lambda p: (top1(probes[p], *validation), p))  # ties: the stronger penalty
    return top1(probes[best], *test), best


def fit_map(world: World, encoder: str, rows: np.ndarray, params: dict, seed: int) -> Maps:
    """A Zoom-shot map trained on `rows` of the training split (20 epochs, `params` over `tuned`)."""
    s, _ = tensors(world, encoder, "shapes:train", rows)
    t, _ = tensors(world, world.project.clip.name, "shapes:train", rows)
    return fit_method("zoomshot", s, t, world.prompts, params, seed, "cpu")[0]


def mapped_top1(
    world: World, maps: Maps, encoder: str, ref: str = "shapes:test", rows: np.ndarray | None = None
) -> float:
    """CLIP's zero-shot top-1 through `maps` on `rows` (None: all) of a split."""
    x, y = tensors(world, encoder, ref, rows)
    pred = (F.normalize(maps.to_clip(x), dim=-1) @ world.classes.emb.T).argmax(-1)
    return float((pred == y).float().mean())


def study(world: World, rows: list[int], seeds: list[int]) -> list[dict]:
    clip = world.project.clip.name
    zero_shot = world.top1(None, clip)
    out = []

    @functools.cache
    def probe_of(encoder: str, rows: bytes, teacher: bool) -> tuple[float, float]:
        return probe_top1(world, encoder, np.frombuffer(rows, dtype=np.int64), teacher)

    def probe(encoder: str, rows: np.ndarray, teacher: bool = False) -> tuple[float, float]:
        return probe_of(encoder, rows.tobytes(), teacher)  # with all rows every seed draws the same rows

    for encoder in ("cnn", "vit", clip):
        for r in rows:
            t0 = time.perf_counter()
            probes = [probe(encoder, train_rows(r, s)) for s in seeds]
            taught = [probe(encoder, train_rows(r, s), teacher=True)[0] for s in seeds]
            maps = [] if encoder == clip else [fit_map(world, encoder, train_rows(r, s), {}, s) for s in seeds]
            mapped = [mapped_top1(world, m, encoder) for m in maps]
            out.append(
                {
                    "encoder": encoder,
                    "rows": r,
                    "probe": [p for p, _ in probes],
                    "penalty": [p for _, p in probes],
                    "teacher_probe": taught,
                    "mapped": mapped,
                    "clip_zero_shot": zero_shot,
                }
            )
            print(f"{encoder}, {r} rows: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| encoder | rows | linear probe (labels) | probe on CLIP's predictions | mapped (tuned mse+cyc+kd-lm) "
        "| CLIP zero-shot | probe / CLIP zs | mapped / CLIP zs | mapped / probe |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        probe, zs = mean_std(r["probe"])[0], r["clip_zero_shot"]
        mapped = mean_std(r["mapped"])[0] if r["mapped"] else None
        ratios = [f"{probe / zs:.0%}"] + ([f"{mapped / zs:.0%}", f"{mapped / probe:.0%}"] if mapped else ["", ""])
        lines.append(
            f"| {r['encoder']} | {r['rows']:,} | {pct(r['probe'])} | {pct(r['teacher_probe'])} "
            f"| {pct(r['mapped']) if mapped else ''} | {100 * zs:.1f} | " + " | ".join(ratios) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    args = arguments(__doc__, "one seed (minutes)")
    torch.set_num_threads(1)  # L-BFGS's small products gain nothing from a second thread on a shared machine
    seeds = [0] if args.quick else list(range(args.seeds))
    rows = [100, TRAIN]
    with tempfile.TemporaryDirectory(prefix="ceiling-") as tmp:
        world = held_out_world(args.work or Path(tmp))
        results = study(world, rows, seeds)
    print("\n" + table(results))
    append_result("ceiling", {"quick": args.quick, "seeds": seeds, "rows": rows, "results": results})


if __name__ == "__main__":
    main()
