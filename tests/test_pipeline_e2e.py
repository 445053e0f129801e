"""The whole pipeline through its real CLI on tiny real models and the generated world."""

import json
import signal

import h5py
import pytest
from helpers import Stopped, feature_rows, inproc, pipeline, write_config

# Make any image decode or encoder construction impossible in the process that runs the command.
NO_IMAGES_NO_ENCODERS = "\n".join(
    ["import sys"]
    + [
        f"sys.modules[{m!r}] = None"
        for m in (
            "timm",
            "open_clip",
            "torchvision",
            "PIL",
            "PIL.Image",
            "zoomshot.extract.world",
            "zoomshot.extract.datasets",
            "zoomshot.extract.encoders",
            "zoomshot.extract.runner",
        )
    ]
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    write_config(folder)
    proc = pipeline(folder, "run", "--no-progress")
    return folder, proc


def test_run_end_to_end_prints_table_with_every_encoder_and_method(world):
    folder, proc = world
    out = proc.stdout
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| Variant |"))
    assert header.startswith(
        "| Variant | cnn / shapes | cnn / shapes (held_out) | cnn / shapes (seen) | vit / shapes |"
    )
    assert [line.split(" | ")[0] for line in lines if line.startswith("| ") and line != header][1:] == [
        "| CLIP",
        "| lstsq",
        "| mse",
    ]
    results = list((folder / "out/results").rglob("*.json"))
    assert len(results) == 1 + 2 * 2 * 2  # CLIP + encoders x variants x fractions
    r = json.loads(next(p for p in results if p.parent.name != "clip").read_text())
    assert {"dataset", "model", "pretrained", "task", "metrics"} <= set(r)
    assert {"acc1", "acc5", "mean_per_class_recall", "teacher_agreement", "clip_acc1"} <= set(r["metrics"])
    assert r["cache_keys"] and r["run"] and r["seed"] == 0
    for name in ("results.csv", "results.json", "table.md", "table.csv", "table.tex"):
        assert (folder / "out/report" / name).stat().st_size > 0


def test_cache_files_follow_the_contract(world):
    folder, _ = world
    feats = sorted((folder / "out/cache/features").glob("*.h5"))
    assert len(feats) == 6  # (clip, cnn, vit) x (train, test)
    trains = [p for p in feats if "_train_" in p.name]
    with h5py.File(trains[0]) as a, h5py.File(trains[1]) as b:
        assert (a["index"][:] == b["index"][:]).all()  # rows align across encoders
        for key in (
            "schema_version",
            "encoder",
            "pretrained",
            "dim",
            "dataset",
            "split",
            "fraction",
            "seed",
            "preprocess",
            "versions",
            "created",
            "rows_done",
            "complete",
        ):
            assert key in a.attrs, key
        assert a["features"].dtype == "float16" and a.attrs["complete"]
    ls = pipeline(folder, "cache", "ls").stdout
    assert ls.count("complete") == 8  # 6 feature files + 2 text files
    assert "8 ok, 0 with problems" in pipeline(folder, "cache", "verify").stdout
    info = json.loads(pipeline(folder, "cache", "info", trains[0].name).stdout)
    assert info["split"] == "train" and info["rows_done"] == 256


def test_refit_and_reevaluate_read_only_the_cache(world):
    folder, _ = world
    proc = pipeline(folder, "fit", "--epochs", "3", "--variants", "mse", prelude=NO_IMAGES_NO_ENCODERS)
    assert "4 done" in proc.stdout  # new settings: new runs, no image, no encoder
    again = pipeline(folder, "fit", "--epochs", "3", "--variants", "mse", prelude=NO_IMAGES_NO_ENCODERS)
    assert "0 done, 4 already finished" in again.stdout
    ev = pipeline(folder, "evaluate", "--all-runs", prelude=NO_IMAGES_NO_ENCODERS)
    assert "13 result file(s)" in ev.stdout  # CLIP + 8 + 4 runs: every run folder, the grid's and the re-fit's


def test_changed_settings_never_reuse_a_stale_file(world):
    folder, _ = world
    before = {p.name: p.stat().st_mtime_ns for p in (folder / "out/cache/features").glob("*.h5")}
    pipeline(folder, "extract", "--no-progress", "--fraction", "0.5", "--splits", "shapes:train")
    after = {p.name: p.stat().st_mtime_ns for p in (folder / "out/cache/features").glob("*.h5")}
    assert len(after) == len(before) + 3 and all(after[k] == v for k, v in before.items())
    new = [k for k in after if k not in before]
    with h5py.File(folder / "out/cache/features" / new[0]) as f:
        assert f["features"].shape[0] == 128 and f.attrs["fraction"] == 0.5


def test_sigkill_mid_extract_then_rerun_equals_uninterrupted(tmp_path):
    """kill -9 once the 3rd batch of the train split is written (a known point, however busy the
    machine is); the re-run resumes and ends bit-identical to an uninterrupted extraction."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
        write_config(folder, train=256, test=64, batch=32)
    proc = Stopped(killed, "extract", "--no-progress", point="extract.batch", k=3)
    proc.wait_stopped()
    assert proc.kill(signal.SIGKILL) == -signal.SIGKILL
    feat_dir = killed / "out/cache/features"
    partials = list(feat_dir.glob("*train*.partial"))
    assert len(partials) == 3 and not list(feat_dir.glob("*train*.h5"))
    for p in partials:
        with h5py.File(p) as f:
            assert f.attrs["rows_done"] == 96  # three batches of 32, counted for every encoder
    inproc(killed, "extract", "--no-progress")
    inproc(whole, "extract", "--no-progress")
    a, b = feature_rows(whole), feature_rows(killed)
    assert a.keys() == b.keys() and len(a) == 6
    assert all(a[k] == b[k] for k in a)
    assert not list(feat_dir.glob("*.partial"))
