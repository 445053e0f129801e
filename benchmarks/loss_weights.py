"""Weight study of Zoom-shot's loss terms: for each term, a range of weights on top of the reconstruction
(with the ridge GCV chooses), on the generated world (cnn and vit, few and many rows) and on noisy
low-data synthetic features with a known answer. Top-1 (%), mean ± std over seeds (a seed draws the rows
and initialises the maps).

    HF_HUB_OFFLINE=1 python benchmarks/loss_weights.py [--quick] [--seeds 3] [--work DIR]

Prints one Markdown table per data setting (rows: terms; columns: weights; `mse` = weight 0) and a
summary line per setting; appends a JSON line to benchmarks/results/loss_weights.jsonl. docs/claims.md's
"Which loss terms help where" section quotes a full run.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from world import World, append_result, arguments, extract, mean_std, pct

from zoomshot.fit.methods import fit_method

TERMS = {  # name -> the settings a weight w gives, on top of the reconstruction alone
    "cyc (image)": lambda w: {"w_cyc": w},
    "cyc (text)": lambda w: {"w_cyc_text": w},
    "kd-lm": lambda w: {"w_kd": w, "kd_variant": "lm"},
    "kd-kl T=1": lambda w: {"w_kd": w, "kd_variant": "kl", "kd_temperature": 1.0},
    "kd-kl T=4": lambda w: {"w_kd": w, "kd_variant": "kl", "kd_temperature": 4.0},
    "kd-htce": lambda w: {"w_kd": w, "kd_variant": "ht-ce"},
}
MSE_ONLY = {"w_cyc": 0.0, "w_cyc_text": 0.0, "w_kd": 0.0}


def synthetic(
    seed: int, n: int, n_test: int = 2000, d: int = 32, m: int = 48, classes: int = 16, prompts: int = 64
) -> dict:
    """CLIP-like t = class centroid + noise; the source a noisy linear image of t (a known answer: the
    teacher's top-1 on t is the ceiling); prompts mixing the centroids, as a class-free set would."""
    g = torch.Generator().manual_seed(seed)
    centroids = F.normalize(torch.randn(classes, d, generator=g), dim=-1)
    labels = torch.randint(classes, (n + n_test,), generator=g)
    t = centroids[labels] + 1.2 * torch.randn(n + n_test, d, generator=g) / math.sqrt(d) + 0.3
    a = torch.randn(m, d, generator=g) / math.sqrt(d)
    s = t @ a.T + 0.5 * torch.randn(n + n_test, m, generator=g) / math.sqrt(m) + 0.5
    u = torch.softmax(3 * torch.randn(prompts, classes, generator=g), dim=-1) @ centroids + 0.3
    return {"s": s[:n], "t": t[:n], "u": u, "s_test": s[n:], "labels": labels[n:], "centroids": centroids}


def synthetic_top1(data: dict, params: dict, method: str = "zoomshot", seed: int = 0) -> float:
    maps = fit_method(method, data["s"], data["t"], data["u"], params, seed, "cpu")[0]
    pred = (F.normalize(maps.to_clip(data["s_test"]), dim=-1) @ data["centroids"].T).argmax(-1)
    return float((pred == data["labels"]).float().mean())


def settings(world: World, quick: bool) -> dict[str, callable]:
    """name -> f(method, params, seed) -> top-1: the data settings of the study."""
    n_train = len(world.features("cnn", "shapes:train").features)
    out = {}
    for encoder in ("cnn", "vit"):
        for rows in (100, n_train) if quick else (100, 400, n_train):
            out[f"world {encoder}, {rows} rows"] = lambda method, params, seed, e=encoder, f=rows / n_train: world.top1(
                world.fit(method, params, e, ["shapes:train"], f, seed), e
            )
    for rows in (100, 1000):
        out[f"synthetic, {rows} rows"] = lambda method, params, seed, r=rows: synthetic_top1(
            synthetic(seed, r), params, method, seed
        )
    return out


def study(world: World, weights: list[float], seeds: list[int], quick: bool) -> dict:
    results = {}
    for name, run in settings(world, quick).items():
        table = {"mse": [run("zoomshot", MSE_ONLY, s) for s in seeds], "lstsq": [run("lstsq", {}, s) for s in seeds]}
        for term, params in TERMS.items():
            for w in weights:
                table[f"{term} @ {w:g}"] = [run("zoomshot", {**MSE_ONLY, **params(w)}, s) for s in seeds]
        results[name] = table
        print_setting(name, table, weights)
    return results


def print_setting(name: str, table: dict, weights: list[float]) -> None:
    base = mean_std(table["mse"])[0]
    print(f"\n### {name}: mse {pct(table['mse'])}, lstsq {pct(table['lstsq'])}\n")
    print("| term | " + " | ".join(f"w = {w:g}" for w in weights) + " |")
    print("|---|" + "---:|" * len(weights))
    best = []
    for term in TERMS:
        cells = [table[f"{term} @ {w:g}"] for w in weights]
        print(f"| {term} | " + " | ".join(pct(c) for c in cells) + " |")
        gains = [mean_std(c)[0] - base for c in cells]
        i = max(range(len(weights)), key=gains.__getitem__)
        best.append(f"{term} {100 * gains[i]:+.1f} at {weights[i]:g}")
    print(f"\nbest gain over mse alone: {'; '.join(best)}", flush=True)


def summary(results: dict, weights: list[float]) -> str:
    """docs/claims.md's table: per term and setting, the change of top-1 over the reconstruction alone at
    weight 1, and the best change with its weight (points, means over seeds)."""
    settings = list(results)
    lines = ["| term | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings)]
    for term in TERMS:
        cells = []
        for name in settings:
            base = mean_std(results[name]["mse"])[0]
            gains = {w: 100 * (mean_std(results[name][f"{term} @ {w:g}"])[0] - base) for w in weights}
            best = max(gains, key=gains.get)
            cells.append(f"{gains.get(1.0, float('nan')):+.1f} ({gains[best]:+.1f} @ {best:g})")
        lines.append(f"| {term} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = arguments(__doc__, "fewer weights, rows and seeds (minutes)")
    weights = [0.1, 1.0, 10.0] if args.quick else [0.1, 0.3, 1.0, 3.0, 10.0]
    seeds = list(range(2 if args.quick else args.seeds))
    with tempfile.TemporaryDirectory(prefix="loss_weights-") as tmp:
        world = World(extract(args.work or Path(tmp), train=4000, test=2000, per_class=16))
        results = study(world, weights, seeds, args.quick)
    print("\n" + summary(results, weights))
    append_result("loss_weights", {"quick": args.quick, "seeds": seeds, "weights": weights, "top1": results})


if __name__ == "__main__":
    main()
