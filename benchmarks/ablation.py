"""What each departure of the `tuned` preset from the paper is worth: the full objective (`mse+cyc+kd-lm`)
at `tuned`, then with one departure removed at a time (the ridge start, the GCV ridge, whitening, term
scaling, the weights, the batch floor), the `paper` preset (all removed; then with tuned's learning rate
and schedule, which the paper preset only assumes, and the batch floor) and `lstsq` for reference, on
the generated world (cnn) and on synthetic features with a known best map (`loss_weights.synthetic`:
the source a noisy linear image of CLIP; the teacher's top-1 is the ceiling). Top-1 (%), mean ± std over
seeds (a seed draws the rows and the random start).

    HF_HUB_OFFLINE=1 python benchmarks/ablation.py [--quick] [--seeds 3] [--work DIR]

The full run: 100 / 400 / 4,000 rows, 3 seeds, 20 epochs; `--quick`: 100 and 1,000 rows, one seed (a
smaller world to extract). Prints a Markdown table (rows: recipes; columns: settings) and appends a JSON
line to benchmarks/results/ablation.jsonl; docs/method.md quotes it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from loss_weights import synthetic, synthetic_top1
from world import World, append_result, arguments, extract, mean_std, pct

#: recipe -> (method, settings over the full objective); each "no ..." row undoes one departure
RECIPES: dict[str, tuple[str, dict]] = {
    "tuned": ("zoomshot", {}),
    "no ridge start (random init)": ("zoomshot", {"init": "random"}),
    "no GCV ridge": ("zoomshot", {"ridge": 0.0, "ridge_by_gcv": False}),
    "no whitening": ("zoomshot", {"whiten": False}),
    "no term scaling (raw units)": ("zoomshot", {"scale_terms": False}),
    "no weight study (all weights 1)": ("zoomshot", {"w_cyc": 1.0, "w_cyc_text": 1.0, "w_kd": 1.0}),
    "no batch floor (1 step/epoch minimum)": ("zoomshot", {"steps_per_epoch": 1}),
    "paper (all of them)": ("zoomshot", {"preset": "paper"}),
    # the paper preset's assumed optimiser settings (docs/method.md) apart from its departures
    "paper, with tuned's lr 3e-2 and cosine": ("zoomshot", {"preset": "paper", "lr": 3e-2, "schedule": "cosine"}),
    "paper, with tuned's lr, cosine and batch floor": (
        "zoomshot",
        {"preset": "paper", "lr": 3e-2, "schedule": "cosine", "steps_per_epoch": 50},
    ),
    "lstsq (closed form)": ("lstsq", {}),
}


def settings(world: World, rows: list[int]) -> dict[str, callable]:
    """name -> f(method, params, seed) -> top-1, for the world's cnn and the synthetic features."""
    n_train = len(world.features("cnn", "shapes:train").features)
    out = {}
    for r in rows:
        out[f"world cnn, {r:,} rows"] = lambda method, params, seed, f=r / n_train: world.top1(
            world.fit(method, params, "cnn", ["shapes:train"], f, seed), "cnn"
        )
    for r in rows:
        out[f"synthetic, {r:,} rows"] = lambda method, params, seed, r=r: synthetic_top1(
            synthetic(seed, r), params, method, seed
        )
    return out


def study(world: World, rows: list[int], seeds: list[int]) -> dict:
    results = {}
    for name, run in settings(world, rows).items():
        t0 = time.perf_counter()
        results[name] = {
            recipe: [run(method, params, s) for s in seeds] for recipe, (method, params) in RECIPES.items()
        }
        print(f"{name}: {time.perf_counter() - t0:.0f} s\n{table(results)}", flush=True)  # a partial table
    return results


def table(results: dict) -> str:
    names = list(results)
    lines = ["| recipe | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for recipe in RECIPES:
        cells = []
        for name in names:
            values = results[name][recipe]
            delta = 100 * (mean_std(values)[0] - mean_std(results[name]["tuned"])[0])
            cells.append(pct(values) + ("" if recipe == "tuned" else f" ({delta:+.1f})"))
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = arguments(__doc__, "100 and 1,000 rows, one seed, a smaller world (minutes)")
    rows = [100, 1000] if args.quick else [100, 400, 4000]
    seeds = [0] if args.quick else list(range(args.seeds))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ablation-") as tmp:
        world = World(
            extract(
                args.work or Path(tmp),
                train=max(rows),
                test=1000 if args.quick else 2000,
                per_class=1,
                encoders=("cnn",),
            )
        )
        print(f"extracted in {time.perf_counter() - t0:.0f} s", flush=True)
        results = study(world, rows, seeds)
    print("\n" + table(results))
    append_result("ablation", {"quick": args.quick, "seeds": seeds, "rows": rows, "top1": results})


if __name__ == "__main__":
    main()
