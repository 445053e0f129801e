"""Joint study of the `tuned` preset's loss weights and the PG-KD temperature: one term at a time
(`loss_weights.py`) misses their interactions. On the default world's cnn (`ceiling.held_out_world`), a grid
of the cycle weight w (= w_cyc = w_cyc_text) x w_kd for PG-KD `lm` (which has no temperature: it matches
logits, and its unit, the teacher logits' variance, cancels CLIP's scale tau), and `kl` at three
temperatures, each on top of `tuned`, trained on all 4,000 training rows, 20 epochs.

Chosen on VALIDATION: 1,000 training-split images that no fit sees (their labels score the choice, never
the test split). The best settings by validation top-1 and the current defaults are then run with more
seeds (a seed orders the batches; with 100 rows it also draws them) at 4,000 and at 100 rows, and their
validation and test top-1 reported, mean ± std over seeds.

    HF_HUB_OFFLINE=1 python benchmarks/joint_weights.py [--quick] [--seeds 3] [--work DIR]

Prints the grid and the finalists as Markdown tables; appends a JSON line to
benchmarks/results/joint_weights.jsonl; docs/method.md quotes it.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

from ceiling import TRAIN, VALIDATION_ROWS, fit_map, held_out_world, mapped_top1, train_rows
from world import World, append_result, arguments, mean_std, pct

from zoomshot.fit.presets import PRESETS
from zoomshot.fit.trainer import TrainConfig

CYCLE_WEIGHTS = (0.1, 0.3, 1.0, 3.0)
KD_WEIGHTS = (0.3, 1.0, 3.0, 10.0)  # 10: the trend had not flattened at 3
TEMPERATURES = (1.0, 4.0, 16.0)  # of PG-KD `kl`: the default (4) and two others
FINALISTS = 2  # the best settings by validation that get more seeds, beside the defaults


def grid(quick: bool) -> dict[str, dict]:
    """name -> settings over `tuned`: PG-KD `lm` at every (w, w_kd); `kl` at each temperature with the
    default weights (the full cube did not fit the shared machine's time)."""
    out = {
        f"lm, w_cyc {w:g}, w_kd {w_kd:g}": {"kd_variant": "lm", "w_cyc": w, "w_cyc_text": w, "w_kd": w_kd}
        for w, w_kd in itertools.product(CYCLE_WEIGHTS, KD_WEIGHTS)
    }
    if not quick:
        tuned = TrainConfig(**PRESETS["tuned"])
        out |= {
            f"kl T={t:g}, w_cyc {tuned.w_cyc:g}, w_kd {tuned.w_kd:g}": {
                "kd_variant": "kl",
                "kd_temperature": t,
                "w_cyc": tuned.w_cyc,
                "w_cyc_text": tuned.w_cyc_text,
                "w_kd": tuned.w_kd,
            }
            for t in TEMPERATURES
        }
    return out


def defaults_name(settings: dict[str, dict]) -> str:
    """The grid point that is the `tuned` preset's own recipe."""
    tuned = TrainConfig(**PRESETS["tuned"])
    keys = ("kd_variant", "w_cyc", "w_cyc_text", "w_kd")
    return next(
        name
        for name, params in settings.items()
        if all(params[k] == getattr(tuned, k) for k in keys)
        and (tuned.kd_variant == "lm" or params["kd_temperature"] == tuned.kd_temperature)
    )


def scores(world: World, params: dict, rows: int, seed: int) -> dict[str, float]:
    maps = fit_map(world, "cnn", train_rows(rows, seed), params, seed)
    return {
        "validation": mapped_top1(world, maps, "cnn", "shapes:train", VALIDATION_ROWS),
        "test": mapped_top1(world, maps, "cnn"),
    }


def study(world: World, settings: dict[str, dict], seeds: list[int]) -> tuple[dict, dict]:
    """The grid at seed 0 with all rows; then the finalists and the defaults at every seed and both sizes."""
    first = {}
    for name, params in settings.items():
        t0 = time.perf_counter()
        first[name] = scores(world, params, TRAIN, seeds[0])
        print(
            f"{name}: validation {100 * first[name]['validation']:.1f}, test {100 * first[name]['test']:.1f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    ranked = sorted(first, key=lambda n: -first[n]["validation"])
    finalists = list(dict.fromkeys(ranked[:FINALISTS] + [defaults_name(settings)]))
    final = {}
    for name, rows in itertools.product(finalists, (TRAIN, 100)):
        runs = [
            first[name] if (rows, s) == (TRAIN, seeds[0]) else scores(world, settings[name], rows, s) for s in seeds
        ]
        final[f"{name} @ {rows}"] = {split: [r[split] for r in runs] for split in ("validation", "test")}
        print(f"{name}, {rows} rows: validation {pct(final[f'{name} @ {rows}']['validation'])}", flush=True)
    return first, final


def tables(first: dict, final: dict, defaults: str) -> str:
    lines = ["| settings (over tuned) | validation | test |", "|---|---:|---:|"]
    for name in sorted(first, key=lambda n: -first[n]["validation"]):
        lines.append(
            f"| {name}{' (defaults)' if name == defaults else ''} | "
            f"{100 * first[name]['validation']:.1f} | {100 * first[name]['test']:.1f} |"
        )
    lines += ["", "| finalist @ rows | validation | test | validation vs defaults |", "|---|---:|---:|---:|"]
    for key, r in final.items():
        name, rows = key.rsplit(" @ ", 1)
        base = final[f"{defaults} @ {rows}"]["validation"]
        gain = 100 * (mean_std(r["validation"])[0] - mean_std(base)[0])
        lines.append(
            f"| {name}{' (defaults)' if name == defaults else ''}, {int(rows):,} rows | "
            f"{pct(r['validation'])} | {pct(r['test'])} | {gain:+.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = arguments(__doc__, "PG-KD lm only, one seed (minutes)")
    seeds = [0] if args.quick else list(range(args.seeds))
    settings = grid(args.quick)
    with tempfile.TemporaryDirectory(prefix="joint_weights-") as tmp:
        world = held_out_world(args.work or Path(tmp))
        first, final = study(world, settings, seeds)
    print("\n" + tables(first, final, defaults_name(settings)))
    append_result("joint_weights", {"quick": args.quick, "seeds": seeds, "grid": first, "finalists": final})


if __name__ == "__main__":
    main()
