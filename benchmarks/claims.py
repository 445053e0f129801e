"""The Zoom-shot paper's claims (arXiv 2401.11633), checked on the generated world at a scale where they
mean something, for both trainer presets (`tuned` and `paper`, fit/presets.py): 40,000 training images,
2,000 test images, as many training images in the world's second rendering style (`sketch`), the shipped
tiny CLIP and the two trained encoders (cnn, vit), seeds >= 3 (a seed draws the rows and initialises the maps).

    HF_HUB_OFFLINE=1 python benchmarks/claims.py [--quick] [--absolute] [--seeds 3] [--work DIR]

Prints one line per (claim, preset), `claim <n> [<preset>]: <claim>: holds|does not hold (<numbers>)`, each
number a top-1 (%) mean ± std over seeds, and appends a JSON line to benchmarks/results/claims.jsonl.
Claim 1 contrasts Zoom-shot with the Linear Aligner on its own recipe (5 epochs), with the Linear Aligner
trained until its objective stops falling, and with `lstsq` (the same map, closed form, without the loss
terms). Claim 3 compares 1 % of the world for 20 epochs with 20 % for 1 epoch; `--absolute` runs it alone
at the paper's row counts (12,800 x 20 epochs against 256,000 x 1, on a world of 256,000 training images).
Claim 4 trains on the test images' style, on the sketch style and on half of each, at equal rows.
`--quick`: 10,000 training images a style, 3 seeds (23,024 images to extract, then about 250 fits).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from world import SKETCH_TRAIN, World, append_result, arguments, extract, mean_std, pct

from zoomshot.fit.method_settings import BUILTIN_VARIANTS
from zoomshot.fit.presets import PRESETS

ENCODERS = ("cnn", "vit")
TRAIN = "shapes:train"
ZOOMSHOT = "mse+cyc+kd-lm"
EPOCHS = 20  # the paper's, and the trainer's default
ABSOLUTE_ROWS = (12_800, 256_000)  # 1 % and 20 % of ImageNet-1k's 1.28 M training images
#: the Linear Aligner's epochs are doubled from its own 5 until its final training loss falls by less than this
CONVERGED = 0.01
MAX_ALIGNER_EPOCHS = 5 * 2**9


def variant(name: str, **extra) -> tuple[str, dict]:
    spec = dict(BUILTIN_VARIANTS[name])
    return spec.pop("method"), {**spec, **extra}


class Claims:
    """Fits and scores on one extracted world, each (variant, settings, encoder, rows, seed) once."""

    def __init__(self, world: World, seeds: list[int]):
        self.world, self.seeds = world, seeds
        self.n = len(world.features("cnn", TRAIN).features)
        self.lines: list[str] = []
        self.rows: list[str] = [
            "| | preset | claim | verdict | top-1 (%), mean ± std over seeds |",
            "|---|---|---|---|---|",
        ]
        self.numbers: dict[str, dict] = {}
        self._done: dict[tuple, list[float]] = {}
        self.aligner_epochs: dict[str, list[int]] = {}

    def rows_at(self, fraction: float) -> str:
        return f"{max(1, round(fraction * self.n)):,}"

    def top1(
        self, name: str, encoder: str, fraction: float, refs: tuple[tuple[str, float], ...] = (), **extra
    ) -> list[float]:
        """Top-1 per seed of variant `name` fitted on `fraction` of the train split (or on the given
        (split, fraction) parts together)."""
        refs = refs or ((TRAIN, fraction),)
        key = (name, encoder, refs, tuple(sorted(extra.items())))
        if key not in self._done:
            method, params = variant(name, **extra)
            self._done[key] = [
                self.world.top1(self._fit(method, params, encoder, refs, seed), encoder) for seed in self.seeds
            ]
        return self._done[key]

    def _fit(self, method: str, params: dict, encoder: str, refs: tuple[tuple[str, float], ...], seed: int):
        parts = [self.world.pairs(encoder, [ref], f, seed) for ref, f in refs]
        s, t = (torch.cat([p[i] for p in parts]) for i in (0, 1))
        return self.world.fit_pairs(method, params, s, t, seed)

    def converged_aligner(self, encoder: str, fraction: float) -> list[float]:
        """The Linear Aligner with its epochs doubled from 5 (cosine schedule over all of them) until its
        final training loss falls by less than CONVERGED; top-1 per seed. Records the epochs it took."""
        out, used = [], []
        for seed in self.seeds:
            s, t = self.world.pairs(encoder, [TRAIN], fraction, seed)
            epochs, last = 5, None
            while True:
                method, params = variant("linear-aligner", epochs=epochs, t_max=epochs)
                maps, history = self.world.fit_pairs(method, params, s, t, seed, with_history=True)
                loss = history[-1]["total"]
                if last is not None and (last - loss) < CONVERGED * last or epochs >= MAX_ALIGNER_EPOCHS:
                    break
                last, epochs = loss, epochs * 2
            out.append(self.world.top1(maps, encoder))
            used.append(epochs)
        self.aligner_epochs[f"{encoder} {self.rows_at(fraction)}"] = used
        return out

    def say(self, n: int, preset: str, claim: str, holds: bool, numbers: dict[str, list[float]], detail: str) -> None:
        line = f"claim {n} [{preset}]: {claim}: {'holds' if holds else 'does not hold'} ({detail})"
        self.lines.append(line)
        self.rows.append(f"| {n} | {preset} | {claim} | {'holds' if holds else '**does not hold**'} | {detail} |")
        self.numbers[f"{n} {preset}"] = {
            "claim": claim,
            "preset": preset,
            "holds": holds,
            "top1": {k: mean_std(v) for k, v in numbers.items()},
        }
        print(line, flush=True)


def mean(values: list[float]) -> float:
    return mean_std(values)[0]


def claim_1(c: Claims, preset: str, fractions: tuple[float, ...]) -> None:
    numbers, parts, holds = {}, [], True
    for encoder in ENCODERS:
        for f in fractions:
            ours = c.top1(ZOOMSHOT, encoder, f, preset=preset, epochs=EPOCHS)
            own, converged = c.top1("linear-aligner", encoder, f), c.converged_aligner(encoder, f)
            closed = c.top1("lstsq", encoder, f)
            where = f"{encoder}, {c.rows_at(f)} rows"
            numbers.update(
                {
                    f"{where} {ZOOMSHOT}": ours,
                    f"{where} linear-aligner": own,
                    f"{where} linear-aligner converged": converged,
                    f"{where} lstsq": closed,
                }
            )
            holds &= mean(ours) > max(mean(own), mean(converged))
            parts.append(
                f"{where}: {ZOOMSHOT} {pct(ours)} vs linear-aligner {pct(own)}, converged "
                f"{pct(converged)} ({'/'.join(map(str, c.aligner_epochs[f'{encoder} {c.rows_at(f)}']))} "
                f"epochs), lstsq {pct(closed)}"
            )
    c.say(
        1,
        preset,
        "Zoom-shot beats the Linear Aligner at equal data (own recipe and converged; lstsq for contrast)",
        holds,
        numbers,
        "; ".join(parts),
    )


def claim_2(c: Claims, preset: str, fractions: tuple[float, ...]) -> None:
    numbers, parts, holds = {}, [], True
    for encoder in ENCODERS:
        for f in fractions:
            lm, htce = (c.top1(v, encoder, f, preset=preset, epochs=EPOCHS) for v in (ZOOMSHOT, "mse+cyc+kd-htce"))
            numbers[f"{encoder} lm {f}"], numbers[f"{encoder} htce {f}"] = lm, htce
            holds &= mean(lm) > mean(htce)
            parts.append(f"{encoder}, {c.rows_at(f)} rows: LM {pct(lm)} vs HT-CE {pct(htce)}")
    c.say(2, preset, "LM beats HT-CE", holds, numbers, "; ".join(parts))


def claim_3(c: Claims, preset: str, small: float, large: float) -> None:
    numbers, parts, holds = {}, [], True
    for encoder in ENCODERS:
        few = c.top1(ZOOMSHOT, encoder, small, preset=preset, epochs=EPOCHS)
        many = c.top1(ZOOMSHOT, encoder, large, preset=preset, epochs=1)
        numbers[f"{encoder} {c.rows_at(small)} x 20"], numbers[f"{encoder} {c.rows_at(large)} x 1"] = few, many
        gap = 100 * (mean(many) - mean(few))
        holds &= gap <= 1.0
        parts.append(
            f"{encoder}: {c.rows_at(small)} rows x 20 epochs {pct(few)} vs {c.rows_at(large)} rows x 1 "
            f"epoch {pct(many)}, gap {gap:+.1f}"
        )
    c.say(
        3,
        preset,
        "1 % of the data for 20 epochs comes within 1 point of 20 % for 1 epoch",
        holds,
        numbers,
        "; ".join(parts),
    )


def claim_4(c: Claims, preset: str, fraction: float) -> None:
    """Equal rows from the test images' style, from the sketch style, and half from each."""
    numbers, parts, holds = {}, [], True
    for encoder in ENCODERS:
        runs = {
            "test style": c.top1(ZOOMSHOT, encoder, 0, ((TRAIN, fraction),), preset=preset, epochs=EPOCHS),
            "sketch style": c.top1(ZOOMSHOT, encoder, 0, ((SKETCH_TRAIN, fraction),), preset=preset, epochs=EPOCHS),
            "mix": c.top1(
                ZOOMSHOT,
                encoder,
                0,
                ((TRAIN, fraction / 2), (SKETCH_TRAIN, fraction / 2)),
                preset=preset,
                epochs=EPOCHS,
            ),
        }
        numbers.update({f"{encoder} {k}": v for k, v in runs.items()})
        means = [mean(v) for v in runs.values()]
        spread = 100 * (max(means) - min(means))
        holds &= spread >= 1.0 and spread > 2 * 100 * max(mean_std(v)[1] for v in runs.values())
        parts.append(f"{encoder}, {c.rows_at(fraction)} rows: " + ", ".join(f"{k} {pct(v)}" for k, v in runs.items()))
    c.say(
        4,
        preset,
        "the training distribution matters (test style vs sketch style vs a mix, equal rows: >= 1 "
        "point apart, beyond 2 std)",
        holds,
        numbers,
        "; ".join(parts),
    )


def claim_5(c: Claims, preset: str, fractions: tuple[float, ...]) -> None:
    numbers, parts, holds = {}, [], True
    for encoder in ENCODERS:
        curve = [c.top1(ZOOMSHOT, encoder, f, preset=preset, epochs=EPOCHS) for f in fractions]
        means = [100 * mean(v) for v in curve]
        numbers.update({f"{encoder} {f}": v for f, v in zip(fractions, curve)})
        first, last = means[1] - means[0], means[-1] - means[-2]
        holds &= last < first and last < 1.0
        parts.append(f"{encoder}: " + ", ".join(f"{c.rows_at(f)} rows {pct(v)}" for f, v in zip(fractions, curve)))
    c.say(
        5,
        preset,
        "accuracy against fraction saturates (the last step adds < 1 point, less than the first)",
        holds,
        numbers,
        "; ".join(parts),
    )


def run(world: World, seeds: list[int]) -> Claims:
    c = Claims(world, seeds)
    # claim 4 (what the second style tests) and claim 1 first: a run cut short still has them
    for claim, args in (
        (claim_4, (1.0,)),
        (claim_1, ((0.01, 0.2),)),
        (claim_3, (0.01, 0.2)),
        (claim_2, ((0.01, 0.2),)),
        (claim_5, ((0.01, 0.05, 0.2, 0.5, 1.0),)),
    ):
        for preset in PRESETS:
            claim(c, preset, *args)
    c.rows[2:] = sorted(c.rows[2:], key=lambda row: int(row.split("|")[1]))  # the table in claim order
    return c


def style_gap(world: World) -> dict[str, float]:
    """How far apart the two styles are for CLIP: its zero-shot top-1 on each style's training images,
    and the mean over classes of the cosine between a class's mean CLIP feature in one style and in the
    other (beside the same cosine between different classes of one style, for scale)."""
    clip = world.project.clip.name
    means = {}
    for ref in (TRAIN, SKETCH_TRAIN):
        ff = world.features(clip, ref)
        x, y = F.normalize(torch.from_numpy(ff.features), dim=-1), torch.from_numpy(ff.labels)
        means[ref] = F.normalize(torch.stack([x[y == k].mean(0) for k in range(len(world.classes.emb))]), dim=-1)
    cross = means[TRAIN] @ means[TRAIN].T
    off = ~torch.eye(len(cross), dtype=torch.bool)
    return {
        "clip_top1_test_style": world.top1(None, "cnn", TRAIN),
        "clip_top1_sketch": world.top1(None, "cnn", SKETCH_TRAIN),
        "same_class_cosine": float((means[TRAIN] * means[SKETCH_TRAIN]).sum(-1).mean()),
        "other_class_cosine": float(cross[off].mean()),
    }


def run_absolute(world: World, seeds: list[int]) -> Claims:
    c = Claims(world, seeds)
    small, large = (rows / c.n for rows in ABSOLUTE_ROWS)
    for preset in PRESETS:
        claim_3(c, preset, small, large)
    return c


def main() -> None:
    args = arguments(
        __doc__,
        "10,000 training images a style, 3 seeds",
        absolute=f"claim 3 alone at {ABSOLUTE_ROWS[0]:,} x 20 epochs vs {ABSOLUTE_ROWS[1]:,} x 1 "
        f"(extracts {ABSOLUTE_ROWS[1]:,} training images: hours on 2 cores)",
    )
    train = ABSOLUTE_ROWS[1] if args.absolute else 10_000 if args.quick else 40_000
    seeds = list(range(max(3, args.seeds)))
    with tempfile.TemporaryDirectory(prefix="claims-") as tmp:
        start = time.perf_counter()
        world = World(
            extract(
                args.work or Path(tmp), train=train, test=2000, per_class=16, sketch_train=0 if args.absolute else train
            )
        )
        print(
            f"CLIP zero-shot top-1 on the test split: {100 * world.top1(None, 'cnn'):.1f} %; {train:,} training "
            f"images a style, seeds {seeds}; extracted in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        gap = {} if args.absolute else style_gap(world)
        if gap:
            print(
                f"the two styles for CLIP: zero-shot top-1 {100 * gap['clip_top1_test_style']:.1f} % on the test "
                f"style's training images, {100 * gap['clip_top1_sketch']:.1f} % on the sketch style's; a class's "
                f"mean features in the two styles: cosine {gap['same_class_cosine']:.3f} (two classes of one "
                f"style: {gap['other_class_cosine']:.3f})",
                flush=True,
            )
        claims = (run_absolute if args.absolute else run)(world, seeds)
    print("\n" + "\n".join(claims.rows))  # the table of docs/method.md
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    append_result(
        "claims",
        {
            "quick": args.quick,
            "absolute": args.absolute,
            "train": train,
            "seeds": seeds,
            "style_gap": gap,
            "claims": claims.numbers,
            "aligner_epochs": claims.aligner_epochs,
            "lines": claims.lines,
        },
    )


if __name__ == "__main__":
    main()
