"""`pipeline export RUN`: a fitted run (or CLIP itself) as a self-contained folder that `load_model` reads.

    <out>/zoomshot_model.json     how to put it together, with provenance (below)
    <out>/maps.safetensors        h and h_inv (a mapped run only), checked by sha256
    <out>/weights/<role>/...      local weights files or folders, copied

Shipped `assets:` weights and hub tags stay references; every file is recorded by its sha256 (the
checksum the run was fitted with). The manifest also holds the run's resolved settings and input
checksums (its run.json), the encoder's and CLIP's identity and preprocessing, the class-name
templates of its evaluation, and every top-1 `pipeline evaluate` wrote for it. The folder is written
beside its target and renamed into place; an existing folder is never overwritten.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from zoomshot.cache import atomic, keys, timestamps
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.outputs import check_out_folder
from zoomshot.cache.runs import read_run, run_dirs
from zoomshot.cache.settings import IMPORTED, ClipCfg, EncoderCfg, Project
from zoomshot.extract import shipped
from zoomshot.extract.prompts import load_templates
from zoomshot.extract.runner import versions

from .model import FORMAT, MANIFEST, MAPS_FILE, assemble


def _place(source: Path, target: Path) -> None:
    """A copy (a folder: file by file), never a hard link: a link would follow later saves over the original,
    and the export would stop matching its recorded checksums."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


def _weights(cfg: ClipCfg | EncoderCfg, role: str, tmp: Path) -> dict:
    """The manifest's weights entry of a model, placing local weights inside the export (`weights/<role>/`)."""
    if cfg.pretrained.startswith(shipped.PREFIX):
        return {"source": "asset", "ref": cfg.pretrained}
    location = cfg.weights
    local = Path(location.removeprefix(shipped.LOCAL_DIR))
    if location.startswith(shipped.LOCAL_DIR) or local.is_file():
        ref = f"weights/{role}/{local.name}"
        _place(local, tmp / ref)
        return {"source": "dir" if local.is_dir() else "file", "ref": ref}
    return {"source": "tag" if location else "random", "ref": location}


def _model_entry(cfg: ClipCfg | EncoderCfg, role: str, key: str, tmp: Path) -> dict:
    """A model of the config, which must be the one the run was fitted with (by content key)."""
    if cfg.model == IMPORTED:
        raise PipelineError(
            f"{role} {cfg.name!r} is imported (model = 'imported'): the cache holds its features "
            f"but there is no model to export"
        )
    if cfg.key() != key:
        raise PipelineError(
            f"the run was fitted with {role} {cfg.name!r} of other weights or settings than the "
            f"config's: export it with the config that made it"
        )
    return {
        "name": cfg.name,
        "key": key,
        "identity": cfg.identity(),
        "config_pretrained": cfg.pretrained,
        "weights": _weights(cfg, "clip" if isinstance(cfg, ClipCfg) else "encoder", tmp),
    }


def _evaluated(results_dir: Path, name: str) -> list[dict]:
    """The top-1 of every result `pipeline evaluate` wrote for `name` (a run, or `clip`)."""
    rows = []
    for path in sorted((results_dir / name).glob("*.json")):
        try:
            r = json.loads(path.read_text())
            rows.append(
                {
                    "file": path.name,
                    "dataset": r["dataset"],
                    "split": r.get("split"),
                    "variant": r.get("variant"),
                    "acc1": r["metrics"]["acc1"],
                    "acc5": r["metrics"].get("acc5"),
                    "clip_acc1": r["metrics"].get("clip_acc1"),
                }
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a result file
    return rows


def export_model(project: Project, name: str, out: Path, say: Callable[[str], None] = print) -> Path:
    """Export run `name` (a folder under runs_dir) or CLIP itself (`name` = the [clip] name) to `out`."""
    check_out_folder(out)
    clip_cfg, runs_dir = project.clip, project.path("runs_dir")
    if name != clip_cfg.name and name not in {p.name for p in run_dirs(runs_dir)}:
        raise PipelineError(
            f"no run named {name} under {runs_dir}: give a run's name (its folder there, the `run` "
            f"of its results) or {clip_cfg.name!r} for CLIP itself"
        )
    run = None if name == clip_cfg.name else read_run(runs_dir / name)
    if run is not None:
        run.maps()  # checked against run.json before anything is written
    record = run.record if run else {}
    templates = load_templates(clip_cfg.templates, Path(clip_cfg.templates_file))
    evaluated = _evaluated(project.path("results_dir"), name)
    if not evaluated:
        say(
            f"note: no result of {name} under {project.path('results_dir')}: the export records no top-1 "
            f"(run `pipeline evaluate` first to record it)"
        )
    with atomic.replacing(out) as tmp:
        tmp.mkdir()
        manifest = {
            "format": FORMAT,
            "name": name,
            "kind": "mapped" if run else "clip",
            "clip": _model_entry(clip_cfg, "CLIP", record.get("clip_key", clip_cfg.key()), tmp),
            "templates": {"name": clip_cfg.templates, "templates": templates},
        }
        if run:
            encoder_cfg = project.encoder(record["encoder"])
            manifest["encoder"] = _model_entry(encoder_cfg, "encoder", record["encoder_key"], tmp)
            shutil.copyfile(run.dir / MAPS_FILE, tmp / MAPS_FILE)
            manifest["maps"] = {"file": MAPS_FILE, "sha256": keys.file_sha256(tmp / MAPS_FILE)}
            if manifest["maps"]["sha256"] != record["maps_sha256"]:
                raise PipelineError(f"{MAPS_FILE} of run {name} changed while it was copied: export it again")
        manifest.update(run=record or None, evaluated=evaluated, versions=versions(), exported=timestamps.now())
        built = assemble(tmp, manifest)  # builds both models: the export loads before it is in place
        for role, tower in built.towers.items():
            manifest[role]["preprocess"] = tower.preprocess
        atomic.write_json(tmp / MANIFEST, manifest)
    return out
