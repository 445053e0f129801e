"""`pipeline rehearse`: the config's whole grid at real shapes before hours of GPU time.

Every model is built from its real architecture with random weights, every dataset replaced by generated
images at its real size and layout (`extract/rehearsal.py`), capped at N classes and K images a class.
Then extract, fit, evaluate, report, export of one run and predict run as the real command would, each
timed with its peak memory; what goes wrong is reported per stage, and the real run is projected:
cache size exactly (widths x published image counts), fits, prompts to encode, and time at the rates
measured here (fits from a calibration at the real widths, since rehearsal fits are too small to time).
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.outputs import check_out_folder

from .config import from_dict, read_toml
from .stage import say, writable

MARKER = "rehearsal.json"
CALIBRATION_ROWS = 4096


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    peak_mib: float = 0.0
    items: int = 0  # images (extract, predict), fits, results
    unit: str = ""
    problem: str = ""


@dataclass
class Rehearsal:
    stages: list[Stage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # substitutions: what differs from the real run
    problems: list[str] = field(default_factory=list)  # what would go wrong in the real run

    @contextmanager
    def stage(self, name: str, unit: str = ""):
        """Times a stage and its peak resident memory; a PipelineError becomes the stage's problem."""
        entry = Stage(name, unit=unit)
        self.stages.append(entry)
        _reset_peak()
        start = time.perf_counter()
        try:
            yield entry
        except PipelineError as e:
            entry.problem = str(e)
            self.problems.append(f"{name}: {e}")
        finally:
            entry.seconds = time.perf_counter() - start
            entry.peak_mib = _peak_mib()

    def ok(self, name: str) -> bool:
        return any(s.name == name and not s.problem for s in self.stages)


def _reset_peak() -> None:
    """Linux resets a process's peak RSS (VmHWM) on this write; elsewhere the peak is the process's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def config_problems(raw: dict, cfg_kinds: list[str]) -> list[str]:
    """What in the real config would quietly change the method or fail on the real data."""
    from zoomshot.extract import shipped

    problems = []
    prompts = shipped.resolve(raw.get("clip", {}).get("classfree_prompts", ""))
    if (
        prompts
        and Path(prompts).resolve() == shipped.CLASSFREE_PROMPTS
        and shipped.default_classfree_prompts(cfg_kinds) != shipped.CLASSFREE_PROMPTS
    ):
        problems.append(
            "clip.classfree_prompts names the world's colour/shape prompts for real data: PG-KD and the "
            "text cycle would distil over 'something red'; use assets:generic_prompts.txt or your own set"
        )
    return problems


def _prepare_out(out: Path) -> None:
    """A fresh folder: an earlier rehearsal's is replaced (its timings would be cache hits), anything else kept."""
    if check_out_folder(out, MARKER, "a rehearsal folder"):
        shutil.rmtree(out)
    writable(out, "rehearse --out")


def _random_weights(raw: dict, notes: list[str]) -> None:
    models = [raw.get("clip", {})] + raw.get("encoders", [])
    named = [m.get("name", "clip") for m in models if m.get("pretrained")]
    for m in models:
        m["pretrained"] = ""
    if named:
        notes.append(f"random weights for {', '.join(named)} (real architectures, no download)")


def _this_machine(raw: dict, notes: list[str]) -> None:
    """Devices and decode workers this machine has (a GPU box's settings would only slow it down)."""
    import os

    import torch

    workers, cores = raw.get("extract", {}).get("num_workers", -1), len(os.sched_getaffinity(0))
    if workers > cores:
        notes.append(f"extract.num_workers = {workers} rehearsed as -1 (this machine has {cores} cores)")
        raw["extract"]["num_workers"] = -1
    if torch.cuda.is_available():
        return
    for table in ("extract", "fit"):
        if raw.get(table, {}).get("device", "auto") not in ("auto", "cpu"):
            notes.append(f"{table}.device = {raw[table]['device']!r} rehearsed on the CPU (no GPU here)")
            raw[table]["device"] = "cpu"


def _cache_contents(cache: Path) -> tuple[dict[str, int], int, int]:
    """What the extraction made, in one pass over the cache: each model's feature width, the image rows
    of one model (every model extracts the same rows) and the prompts (and captions) embedded."""
    import h5py

    widths, rows, prompts = {}, {}, 0
    for path in cache.rglob("*.h5"):
        with h5py.File(path, "r") as f:
            if "embeddings" in f:
                prompts += f["embeddings"].shape[0]
            elif "features" in f and f.attrs.get("complete"):
                widths[f.attrs["encoder"]] = f["features"].shape[1]
                rows.setdefault(f.attrs["encoder"], []).append(f["features"].shape[0])
    return widths, sum(next(iter(rows.values()), [])), prompts


def calibrate_fits(
    specs: list[dict], widths: dict[str, int], clip_dim: int, prompts: int, device: str
) -> dict[tuple[str, int], float]:
    """Seconds per (row x epoch) of each variant at each encoder width: one epoch over CALIBRATION_ROWS
    random rows at the real widths (rehearsal fits of a few rows are all overhead)."""
    import torch

    from zoomshot.fit.methods import fit_method, method

    rates, gen = {}, torch.Generator().manual_seed(0)
    for spec in specs:
        r = spec["record"]
        key = (r["variant"], widths[r["encoder"]])
        if key in rates:
            continue
        s = torch.randn(CALIBRATION_ROWS, key[1], generator=gen)
        t = torch.randn(CALIBRATION_ROWS, clip_dim, generator=gen)
        params = {**r["params"], **({"epochs": 1} if method(r["method"]).by_epochs else {})}
        u = torch.randn(prompts, clip_dim, generator=gen) if method(r["method"]).needs_prompts(params) else None
        start = time.perf_counter()
        fit_method(r["method"], s, t, u, params, 0, device)
        rates[key] = (time.perf_counter() - start) / CALIBRATION_ROWS
    return rates


def project_real_run(
    cfg, standins, widths: dict[str, int], specs, rates, text_rate: float, image_rate: float, device: str
) -> dict:
    """The real run's figures: cache bytes (exact), fits, prompts, and hours at this device's rates."""
    from zoomshot.cache.layout import read_prompt_file
    from zoomshot.cache.subsets import subset_size
    from zoomshot.extract.prompts import load_templates

    real = {s.name: s for s in standins}
    clip_dim = widths.get(cfg.clip.name, 0)
    images, feature_bytes = 0, 0
    for ref in cfg.extract.splits:
        name, split = ref.split(":")
        s = real.get(name)
        if s is None or s.real is None:
            continue
        count = subset_size(s.real_images(split), cfg.extract.fraction_of(ref))
        images += count
        feature_bytes += count * sum(2 * w + 16 for w in widths.values())  # float16 row + int64 index, label
    templates = len(load_templates(cfg.clip.templates, Path(cfg.clip.templates_file)))
    class_prompts = sum(
        real[n].real_classes * templates for n in {r.split(":")[0] for r in cfg.extract.splits} if n in real
    )
    classfree = len(read_prompt_file(cfg.clip.classfree_prompts))
    text_bytes = (class_prompts + classfree) * clip_dim * 4
    row_epochs = {}
    for spec in specs:
        r = spec["record"]
        name, split = r["train"][0].split(":")
        rows = subset_size(real[name].real_images(split), r["fraction"]) if name in real else 0
        key = (r["variant"], widths.get(r["encoder"], 0))
        row_epochs[spec["name"]] = rates.get(key, 0) * rows * (r["epochs"] or 1)
    return {
        "images": images,
        "cache_bytes": feature_bytes + text_bytes,
        "fits": len(specs),
        "prompts": class_prompts + classfree,
        "extract_s": images / image_rate if image_rate else float("nan"),
        "text_s": (class_prompts + classfree) / text_rate if text_rate else float("nan"),
        "fit_s": sum(row_epochs.values()),
        "device": device,
    }


def _bytes(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _hours(s: float) -> str:
    return f"{s / 3600:,.1f} h" if s >= 3600 else f"{s / 60:,.1f} min" if s >= 60 else f"{s:,.1f} s"


def table(r: Rehearsal, disk_per_image: float, proj: dict | None) -> str:
    lines = ["| stage | wall time | throughput | peak memory | result |", "|---|---:|---:|---:|---|"]
    for s in r.stages:
        rate = f"{s.items / s.seconds:,.1f} {s.unit}/s" if s.items and s.unit and s.seconds else ""
        lines.append(
            f"| {s.name} | {s.seconds:,.1f} s | {rate} | {s.peak_mib:,.0f} MiB | "
            f"{'FAILED: ' + s.problem if s.problem else 'ok'} |"
        )
    lines.append("")
    lines.append(
        f"Feature cache on disk: {disk_per_image / 1024:,.1f} KiB per image (all encoders and CLIP); "
        f"throughputs include loading the models, so few images make them pessimistic."
    )
    if proj:
        lines += [
            "",
            f"| the real run | projected (this machine's rates, {proj['device']}) |",
            "|---|---:|",
            f"| images to extract | {proj['images']:,} |",
            f"| cache size (features + text) | {_bytes(proj['cache_bytes'])} |",
            f"| fits | {proj['fits']:,} |",
            f"| text prompts to encode | {proj['prompts']:,} |",
            f"| extraction at the rate measured here | {_hours(proj['extract_s'])} |",
            f"| text encoding at the rate measured here | {_hours(proj['text_s'])} |",
            f"| fits at the calibrated rates here | {_hours(proj['fit_s'])} |",
        ]
    return "\n".join(lines)


def _one_seed_one_epoch(cfg, notes: list[str]) -> None:
    """Seeds and epochs change no shape and no code path, only the time, which the calibration projects."""
    fit = cfg.fit
    if len(fit.seeds) > 1 or max(fit.epochs) > 1:
        notes.append(
            f"fits rehearsed with seed {fit.seeds[0]} and 1 epoch (the grid has seeds {fit.seeds}, epochs "
            f"{fit.epochs}; --whole-grid runs them all); the projection counts the whole grid"
        )
        fit.seeds, fit.epochs = fit.seeds[:1], [1]


def rehearse_config(
    config: Path | None, out: Path, classes: int, per_class: int, progress: bool, whole_grid: bool = False
) -> tuple[Rehearsal, str]:
    from zoomshot.extract.rehearsal import stand_in

    from .main import do_evaluate, do_extract, do_fit, do_report

    raw, r = read_toml(config), Rehearsal()
    _prepare_out(out)
    (out / MARKER).write_text(json.dumps({"config": str(config), "started": time.time()}))  # claims the folder
    r.problems += config_problems(raw, [d.get("kind", "shapes") for d in raw.get("datasets", [])])
    _random_weights(raw, r.notes)
    _this_machine(raw, r.notes)
    rehearsed, standins = stand_in(raw, out, classes, per_class)
    for s in standins:
        r.notes.append(
            f"{s.name}: {', '.join(f'{n} {k}' for k, n in s.images.items())} generated images of "
            f"{s.real.size[0]}x{s.real.size[1]}, {len(s.classes)} of {s.real_classes} classes (names: "
            f"{s.names_from})"
            + (f"; as an ImageFolder (the real {s.kind} layout is not made offline)" if s.layout != s.kind else "")
            + ("" if s.real.splits else "; its images are not on this machine, so the projection leaves it out")
        )
    cfg = from_dict(rehearsed)
    timings: dict[str, float] = {}
    with r.stage("extract", "images") as st:
        do_extract(cfg, progress, timings=timings)
    cache = cfg.project.path("cache_dir")
    widths, images, prompts_done = _cache_contents(cache)
    r.stages += [
        Stage("↳ images", timings.get("features_s", 0.0), st.peak_mib, images, "images"),
        Stage("↳ text", timings.get("text_s", 0.0), st.peak_mib, prompts_done, "prompts"),
    ]
    from zoomshot.fit.sweep import expand

    real_specs = expand(cfg.project, cfg.fit)  # the real grid: what the projection counts
    if not whole_grid:
        _one_seed_one_epoch(cfg, r.notes)
    if r.ok("extract"):
        with r.stage("fit", "fits") as st:
            specs = expand(cfg.project, cfg.fit)
            st.items = len(specs)
            if failed := do_fit(cfg):
                raise PipelineError(f"{failed} fit(s) failed (their lines are above)")
    if r.ok("fit"):
        with r.stage("evaluate", "results") as st:
            if skipped := do_evaluate(cfg, progress):
                raise PipelineError(f"{skipped} evaluation(s) skipped (their lines are above)")
            st.items = len(list(cfg.project.path("results_dir").rglob("*.json")))
        with r.stage("report"):
            do_report(cfg)
        _export_and_predict(r, cfg, specs, out, standins, progress)
    disk = _size(cache / "features") / images if images else 0.0  # text files do not grow with images
    proj = None
    if r.ok("fit"):
        from zoomshot.cache.compute import resolve_device
        from zoomshot.cache.layout import read_prompt_file

        with r.stage("calibrate fits", "fits") as st:
            rates = calibrate_fits(
                real_specs,
                widths,
                widths[cfg.clip.name],
                len(read_prompt_file(cfg.clip.classfree_prompts)),
                resolve_device(cfg.fit.device, "fit.device"),
            )
            st.items = len(rates)
        proj = project_real_run(
            cfg,
            standins,
            widths,
            real_specs,
            rates,
            prompts_done / timings["text_s"] if timings.get("text_s") else 0.0,
            images / timings["features_s"] if timings.get("features_s") else 0.0,
            resolve_device(cfg.extract.device, "extract.device"),
        )
    text = table(r, disk, proj)
    (out / "rehearsal.md").write_text(text + "\n")
    (out / MARKER).write_text(
        json.dumps(
            {
                "config": str(config),
                "classes": classes,
                "per_class": per_class,
                "stages": [s.__dict__ for s in r.stages],
                "notes": r.notes,
                "problems": r.problems,
                "projection": proj,
            },
            indent=1,
        )
    )
    return r, text


def _export_and_predict(r: Rehearsal, cfg, specs: list[dict], out: Path, standins, progress: bool) -> None:
    """Export the first finished Zoom-shot run and predict a few of the generated test images through it."""
    from zoomshot.export.package import export_model
    from zoomshot.export.predict import predict

    runs = [s for s in specs if s["record"]["method"] == "zoomshot" and (Path(s["run_dir"]) / "run.json").is_file()]
    if not runs:
        r.problems.append("export: no finished Zoom-shot run to export")
        return
    target = out / "export"
    with r.stage("export"):
        export_model(cfg.project, runs[0]["name"], target, say)
    if not r.ok("export"):
        return
    name, split = cfg.evaluate.test[0].split(":")
    s = next(x for x in standins if x.name == name)
    images = sorted(p for p in (Path(cfg.project.dataset(name).root) / split).rglob("*") if p.is_file())[:8]
    with r.stage("predict", "images") as st:
        result = predict(
            target, s.classes, ["a photo of a {c}."], images, min(5, len(s.classes)), 8, "cpu", "skip", progress, say
        )
        st.items = len(result.rows)


@click.command("rehearse")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="The real config [default: ./pipeline.toml].")
@click.option(
    "--classes",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Classes per dataset (the real class names, capped).",
)
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Generated images per class and split (training splits get enough for the smallest fraction).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="rehearsal",
    show_default=True,
    help="Folder of the rehearsal's data, cache, runs and report (replaced on a re-run).",
)
@click.option("--whole-grid", is_flag=True, help="Fit every seed and epoch count too (slow on a CPU).")
@click.option("--progress/--no-progress", default=True, help="Progress bars.")
@click.pass_context
def rehearse(
    ctx: click.Context, config: str | None, classes: int, per_class: int, out: str, whole_grid: bool, progress: bool
) -> None:
    """Run the config's whole grid at real shapes on generated data, random weights, and project the
    real run's cache size, fits and time. Exits 1 when a stage failed or the config has a problem."""
    from zoomshot.cache.locks import trying

    config = config or ctx.parent.params.get("config")
    with trying(Path(out).absolute()) as mine:
        if not mine:
            raise PipelineError(f"another `pipeline rehearse` is writing {out}: wait for it or give another --out")
        r, text = rehearse_config(Path(config) if config else None, Path(out), classes, per_class, progress, whole_grid)
    click.echo("\n".join(["", "== rehearsal", *(f"note: {n}" for n in r.notes), "", text]))
    for p in r.problems:
        click.echo(f"problem: {p}")
    click.echo(f"rehearse: {len(r.problems)} problem(s); table in {Path(out) / 'rehearsal.md'}")
    if r.problems:
        raise SystemExit(1)
