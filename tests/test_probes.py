"""The probe suite: the wrong ways of issue 24, each run as a real `pipeline` subprocess on one small
extracted world, asserting the one line on stderr (no traceback) and the exit code, so that they stay
fixed. Re-runs that only show recovery run in this process (quicker).

Wrong ways tried elsewhere, as real subprocesses or through the console script's own `main()`, and not
repeated here:
* tests/test_bad_images.py: corrupt, empty and mislabelled images counted and named; `on_bad_image =
  "fail"` names the file; duplicate class names; 16-bit, palette and decompression-bomb PNGs.
* tests/test_cli_errors.py: unknown config keys and types, missing weight files, unknown model names, a
  missing config or cache, float16 overflow during extraction.
* tests/test_bad_config.py: every out-of-range setting of each table, duplicate names, bad variant
  definitions, broken config and weights files, an unwritable cache folder.
* tests/test_import_checks.py: `cache import` of bad arrays, labels, a descending, repeated or
  mismatched index, and widths that disagree in CLIP's or an encoder's space.
* tests/test_stale_inputs.py: a full disk while the cache file itself grows (no decoding workers).
"""

import json
import shutil
import signal

import numpy as np
import pytest
from helpers import (
    CLIP,
    CNN,
    PATHS,
    SHAPES,
    Stopped,
    feature_rows,
    file_size_limit,
    inproc,
    one_line_error,
    pipeline,
    write_config,
)

WORLD = (
    PATHS
    + CLIP
    + CNN
    + SHAPES
    + """
[fit]
variants = ["lstsq"]
fractions = [1.0]
"""
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One encoder, 32 + 16 images, one run: extracted, fitted, evaluated, reported and exported once."""
    folder = tmp_path_factory.mktemp("world")
    write_config(folder, WORLD, train=32, test=16, batch=16)
    for args in (("extract", "--no-progress"), ("fit",), ("evaluate", "--no-progress"), ("report", "--no-plots")):
        inproc(folder, *args)
    inproc(folder, "export", _run(folder), "--out", "exports/run")
    return folder


def _run(folder) -> str:
    (run,) = [p.name for p in (folder / "out/runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run


def _copy(world, tmp_path, *parts: str):
    """The world's config and the named folders of its `out/` (cache, runs, results, report)."""
    shutil.copy(world / "pipeline.toml", tmp_path)
    for part in parts:
        shutil.copytree(world / "out" / part, tmp_path / "out" / part)
    return tmp_path


def _made(folder, stage: str):
    """What `stage` made in `folder`, in a form that compares across folders."""
    out = folder / "out"
    if stage == "extract":
        return feature_rows(folder)
    if stage == "fit":
        # the maps' values to 5 significant digits: an in-process re-fit has differed from the fixture's
        # in-process fit in the last bits (issue 24's note; under investigation), never beyond
        return {p.parent.name: _values(p) for p in out.glob("runs/*/maps.safetensors")}
    if stage == "evaluate":
        return {str(p.relative_to(out)): json.loads(p.read_text())["metrics"] for p in out.glob("results/**/*.json")}
    if stage == "report":
        return {p.name: p.read_text() for p in (out / "report").glob("*.csv")}
    return json.loads((folder / "exports/run/zoomshot_model.json").read_text())["maps"]


def _values(path) -> dict:
    from safetensors.numpy import load_file

    return {
        k: np.format_float_positional(float(np.abs(v).sum()), precision=5, unique=False, fractional=False)
        for k, v in load_file(path).items()
    }


def _temporary(folder):
    return sorted((folder / "out").rglob(".*.tmp"))


# ---- config: checked before any work ----------------------------------------------------------------
CONFIG_PROBES = {
    "negative subset_seed": (("[extract]\n", "[extract]\nsubset_seed = -1\n"), "'extract.subset_seed' must be >= 0"),
    "empty template list": (
        ('templates = "shapes"', 'templates = "shapes"\ntemplates_file = "empty.json"'),
        "templates entry 'shapes' in empty.json must be a non-empty list",
    ),
    "split_fractions of a split not extracted": (
        ("[extract]\n", '[extract]\nsplit_fractions = { "shapes:tran" = 0.5 }\n'),
        "'extract.split_fractions' names shapes:tran, which extract.splits",
    ),
}


@pytest.mark.parametrize("edit, needle", CONFIG_PROBES.values(), ids=CONFIG_PROBES)
def test_bad_config_is_one_line_before_any_work(tmp_path, edit, needle):
    config = write_config(tmp_path, WORLD, train=32, test=16, batch=16)
    assert edit[0] in config.read_text()
    config.write_text(config.read_text().replace(*edit, 1))
    (tmp_path / "empty.json").write_text(json.dumps({"shapes": []}))
    proc = pipeline(tmp_path, "extract", "--no-progress", check=False)
    one_line_error(proc.returncode, proc.stderr, needle)
    assert not (tmp_path / "out").exists()


# ---- faults: a full disk at every stage, a killed command ---------------------------------------------
DISK = {  # stage: (the cached folders it starts from, its arguments, the file-size limit in bytes)
    # the decoding worker's shared-memory batch (~600 kB) is what the limit stops; the cache files stay below it
    "extract": ((), ("extract", "--no-progress", "--num-workers", "1"), 100_000),
    "fit": (("cache",), ("fit",), 0),
    "evaluate": (("cache", "runs"), ("evaluate", "--no-progress"), 0),
    "report": (("cache", "runs", "results"), ("report", "--no-plots"), 0),
    # (above 0: Python's tempfile writes a few bytes to find a usable folder, and reports a failure as ENOENT)
    "export": (("cache", "runs", "results"), ("export", "{run}", "--out", "exports/run"), 10_000),
}


@pytest.mark.parametrize("stage", DISK)
def test_a_full_disk_is_one_line_and_the_rerun_makes_what_a_clean_run_makes(world, tmp_path, stage):
    parts, args, limit = DISK[stage]
    folder = _copy(world, tmp_path, *parts)
    args = [a.format(run=_run(world)) for a in args]
    proc = pipeline(folder, *args, check=False, preexec_fn=file_size_limit(limit))
    one_line_error(
        proc.returncode,
        proc.stderr,
        "the disk is full or a file-size limit was reached",
        "File too large",
        "run the same command again",
    )
    inproc(folder, *args)
    assert _made(folder, stage) == _made(world, stage)
    assert not _temporary(folder)


@pytest.mark.parametrize(
    "stage, parts, args",
    [
        ("evaluate", ("cache", "runs"), ("evaluate", "--no-progress")),
        ("report", ("cache", "runs", "results"), ("report", "--no-plots")),
    ],
)
def test_a_killed_commands_temporary_files_go_with_the_next_run(world, tmp_path, stage, parts, args):
    from zoomshot.cache import atomic

    folder = _copy(world, tmp_path, *parts)
    proc = Stopped(folder, *args, point="atomic.replace", k=2)  # the second file written, before its rename
    proc.wait_stopped()
    assert proc.kill(signal.SIGKILL) == -signal.SIGKILL
    left = _temporary(folder)
    assert len(left) == 1
    live = atomic.temporary_name(left[0].parent / "live.json")  # a running writer's (this process)
    live.write_text("{}")
    inproc(folder, *args)
    assert _temporary(folder) == [live]
    assert _made(folder, stage) == _made(world, stage)


# ---- what is read is believed only when checked -----------------------------------------------------------
def test_an_edited_run_json_is_a_stale_run_never_believed(world, tmp_path):
    folder, run = _copy(world, tmp_path, "cache", "runs", "results"), _run(world)
    record = folder / "out/runs" / run / "run.json"
    text = record.read_text()
    assert '"fraction": 1.0' in text
    record.write_text(text.replace('"fraction": 1.0', '"fraction": 0.5'))  # valid JSON, a plausible value
    proc = pipeline(folder, "export", run, "--out", "exports/edited", check=False)
    one_line_error(proc.returncode, proc.stderr, f"run {run}: run.json was changed after the fit", "pipeline fit")
    ev = inproc(folder, "evaluate", "--no-progress", check=False)
    assert ev.returncode == 1 and f"skip: run {run}: run.json was changed after the fit" in ev.stdout, ev.stdout
    fit = inproc(folder, "fit")
    assert "1 done" in fit.stdout and f"re-fitting run {run}: run.json was changed after the fit" in fit.stderr
    assert json.loads(record.read_text())["fraction"] == 1.0
    old = {k: v for k, v in json.loads(record.read_text()).items() if k != "record_sha256"}
    record.write_text(json.dumps(old))  # written before the checksum
    assert "lacks record_sha256" in inproc(folder, "fit").stderr


@pytest.mark.parametrize(
    "templates, needle",
    [
        ([], "no usable templates in the manifest of"),
        (["a photo", "a drawing"], "each needs a {c} placeholder"),
    ],
)
def test_predict_refuses_an_export_without_usable_templates(world, tmp_path, templates, needle):
    from zoomshot.extract.world import ShapesWorld

    shutil.copytree(world / "exports/run", tmp_path / "export")
    manifest = tmp_path / "export/zoomshot_model.json"
    data = json.loads(manifest.read_text())
    data["templates"]["templates"] = templates
    manifest.write_text(json.dumps(data))
    ShapesWorld("test", size=64, seed=0).image(0).save(tmp_path / "img.png")
    proc = pipeline(tmp_path, "predict", "img.png", "--model", "export", "--classes", "circle,star", check=False)
    one_line_error(proc.returncode, proc.stderr, needle)


def test_cache_rm_takes_the_list_of_skipped_images_with_the_file(world, tmp_path):
    folder = _copy(world, tmp_path, "cache")
    target = next((folder / "out/cache/features").glob("shapes_train_cnn_*.h5"))
    listed = target.with_name(target.name + ".bad.txt")
    listed.write_text("3\tshapes item 3\tcannot identify image file\n")
    inproc(folder, "cache", "rm", target.name)
    assert not target.exists() and not listed.exists()
