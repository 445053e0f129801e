"""The Zoom-shot paper's claims (arXiv 2401.11633), checked on the generated world at a scale where they
mean something: 40,000 training images, 2,000 test images, a name-rendered support set, the shipped tiny
CLIP and the two trained encoders (cnn, vit), seeds >= 3 (a seed draws the rows and initialises the maps).

    HF_HUB_OFFLINE=1 python benchmarks/claims.py [--quick] [--seeds 3] [--work DIR]

Prints one line per claim, `claim <n>: <claim>: holds|does not hold (<numbers>)`, each number a top-1 (%)
mean ± std over seeds, and appends a JSON line to benchmarks/results/claims.jsonl; the README's "The
paper's claims on the world" section is made from its output. `--quick` (10,000 training images, 3 seeds)
finishes in under 10 minutes on 2 cores. The variants are the pipeline's built-in ones (fit/sweep.py).
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from world import World, append_result, arguments, extract, mean_std, pct

from zoomshot.fit.sweep import BUILTIN_VARIANTS

ENCODERS = ("cnn", "vit")
TRAIN, SUPPORT = "shapes:train", "shapes-sus:train"


def variant(name: str, **extra) -> tuple[str, dict]:
    spec = dict(BUILTIN_VARIANTS[name])
    return spec.pop("method"), {**spec, **extra}


class Claims:
    def __init__(self, world: World, seeds: list[int], train_rows: int):
        self.world, self.seeds, self.train_rows = world, seeds, train_rows
        self.lines: list[str] = []
        self.rows: list[str] = ["| | claim | verdict | top-1 (%), mean ± std over seeds |", "|---|---|---|---|"]
        self.numbers: dict[str, dict] = {}

    def top1(self, name: str, encoder: str, fraction: float, refs: tuple[str, ...] = (TRAIN,),
             **extra) -> list[float]:
        method, params = variant(name, **extra)
        return [self.world.top1(self.world.fit(method, params, encoder, list(refs), fraction, seed), encoder)
                for seed in self.seeds]

    def say(self, n: int, claim: str, holds: bool, numbers: dict[str, list[float]], detail: str) -> None:
        line = f"claim {n}: {claim}: {'holds' if holds else 'does not hold'} ({detail})"
        self.lines.append(line)
        self.rows.append(f"| {n} | {claim} | {'holds' if holds else '**does not hold**'} | {detail} |")
        self.numbers[str(n)] = {"claim": claim, "holds": holds,
                                "top1": {k: mean_std(v) for k, v in numbers.items()}}
        print(line, flush=True)

    def better(self, n: int, claim: str, a: str, b: str, fractions: tuple[float, ...], rows: Callable) -> None:
        """`a` beats `b` at every (encoder, fraction): its mean is higher."""
        numbers, parts, holds = {}, [], True
        for encoder in ENCODERS:
            for f in fractions:
                x, y = self.top1(a, encoder, f), self.top1(b, encoder, f)
                numbers[f"{encoder} {a} {f}"], numbers[f"{encoder} {b} {f}"] = x, y
                holds &= mean_std(x)[0] > mean_std(y)[0]
                parts.append(f"{encoder}, {rows(f)} rows: {a} {pct(x)} vs {b} {pct(y)}")
        self.say(n, claim, holds, numbers, "; ".join(parts))


def run(world: World, seeds: list[int], fractions: tuple[float, ...]) -> Claims:
    n = len(world.features("cnn", TRAIN).features)
    rows = lambda f: f"{max(1, round(f * n)):,}"   # noqa: E731
    c = Claims(world, seeds, n)
    c.better(1, "Zoom-shot beats the Linear Aligner at equal data", "mse+cyc+kd-lm", "linear-aligner", (0.01, 0.2),
             rows)
    c.better(2, "LM beats HT-CE", "mse+cyc+kd-lm", "mse+cyc+kd-htce", (0.01, 0.2), rows)

    numbers, parts, holds = {}, [], True
    for encoder in ENCODERS:
        small = c.top1("mse+cyc+kd-lm", encoder, 0.01, epochs=20)
        large = c.top1("mse+cyc+kd-lm", encoder, 0.2, epochs=1)
        numbers[f"{encoder} 1% x 20"], numbers[f"{encoder} 20% x 1"] = small, large
        gap = 100 * (mean_std(large)[0] - mean_std(small)[0])
        holds &= gap <= 1.0
        parts.append(f"{encoder}: {rows(0.01)} rows x 20 epochs {pct(small)} vs {rows(0.2)} rows x 1 epoch "
                     f"{pct(large)}, gap {gap:+.1f}")
    c.say(3, "1 % of the data for 20 epochs comes within 1 point of 20 % for 1 epoch", holds, numbers, "; ".join(parts))

    numbers, parts, holds = {}, [], True
    for encoder in ENCODERS:
        world_imgs = c.top1("mse+cyc+kd-lm", encoder, 1.0, refs=(TRAIN,))
        support = c.top1("mse+cyc+kd-lm", encoder, 1.0, refs=(SUPPORT,))
        mixed = c.top1("mse+cyc+kd-lm", encoder, 1.0, refs=(TRAIN, SUPPORT))
        numbers.update({f"{encoder} world": world_imgs, f"{encoder} support": support, f"{encoder} mix": mixed})
        spread = 100 * (max(map(lambda v: mean_std(v)[0], (world_imgs, support, mixed)))
                        - min(map(lambda v: mean_std(v)[0], (world_imgs, support, mixed))))
        holds &= spread >= 1.0 and spread > 2 * 100 * max(mean_std(v)[1] for v in (world_imgs, support, mixed))
        parts.append(f"{encoder}: world images {pct(world_imgs)}, name-rendered support {pct(support)}, mix "
                     f"{pct(mixed)}")
    c.say(4, "the training distribution matters (world vs name-rendered support images vs a mix: >= 1 point "
             "apart, beyond 2 std)", holds, numbers,
          "; ".join(parts))

    numbers, parts, holds = {}, [], True
    for encoder in ENCODERS:
        curve = [c.top1("mse+cyc+kd-lm", encoder, f) for f in fractions]
        means = [100 * mean_std(v)[0] for v in curve]
        numbers.update({f"{encoder} {f}": v for f, v in zip(fractions, curve)})
        first, last = means[1] - means[0], means[-1] - means[-2]
        holds &= last < first and last < 1.0
        parts.append(f"{encoder}: " + ", ".join(f"{rows(f)} rows {pct(v)}" for f, v in zip(fractions, curve)))
    c.say(5, "accuracy against fraction saturates (the last step adds < 1 point, less than the first)", holds,
          numbers, "; ".join(parts))
    return c


def main() -> None:
    args = arguments(__doc__, "10,000 training images, 3 seeds: under 10 minutes")
    train = 10_000 if args.quick else 40_000
    seeds = list(range(max(3, args.seeds)))
    with tempfile.TemporaryDirectory(prefix="claims-") as tmp:
        world = World(extract(args.work or Path(tmp), train=train, test=2000, per_class=64))
        print(f"CLIP zero-shot top-1 on the test split: {100 * world.top1(None, 'cnn'):.1f} %; {train:,} training "
              f"images, seeds {seeds}", flush=True)
        claims = run(world, seeds, (0.01, 0.05, 0.2, 0.5, 1.0))
    print("\n" + "\n".join(claims.rows))    # the README's table
    append_result("claims", {"quick": args.quick, "train": train, "seeds": seeds, "claims": claims.numbers,
                             "lines": claims.lines})


if __name__ == "__main__":
    main()
