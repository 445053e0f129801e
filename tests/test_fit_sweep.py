"""Fit through the real CLI on imported synthetic features with a known answer, threaded and on a
real dask.distributed cluster."""

import json

import numpy as np
import pytest
from helpers import SYNTHETIC_CONFIG as CONFIG
from helpers import import_synthetic, pipeline, run_main, synthetic_arrays
from safetensors.numpy import load_file


def _import(folder, *args):
    code, out, err = run_main(folder, "cache", "import", *args)
    assert code == 0, (out, err)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    synthetic_arrays(folder)
    (folder / "pipeline.toml").write_text(CONFIG.format(runs="out/runs"))
    import_synthetic(folder)
    pipeline(folder, "fit")
    return folder


def test_imported_cache_is_complete_and_verified(synthetic):
    assert "6 ok, 0 with problems" in pipeline(synthetic, "cache", "verify").stdout


def test_every_method_reaches_teacher_top1_within_2_points(synthetic):
    pipeline(synthetic, "evaluate")
    results = [json.loads(p.read_text()) for p in (synthetic / "out/results").rglob("*.json")]
    clip = next(r for r in results if r["method"] == "clip")["metrics"]["acc1"]
    runs = {r["variant"]: r["metrics"]["acc1"] for r in results if r["method"] != "clip"}
    assert clip > 0.5 and set(runs) == {"mse", "mse+cyc+kd-lm", "lstsq", "procrustes"}
    for variant in ("mse", "mse+cyc+kd-lm", "lstsq"):
        assert runs[variant] >= clip - 0.02, (variant, runs[variant], clip)


def _runs(folder):
    """Run folders by name (the hidden .locks folder is not a run)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def test_distributed_sweep_gives_the_same_maps_as_threads(synthetic):
    from dask.distributed import LocalCluster

    (synthetic / "cluster.toml").write_text(CONFIG.format(runs="out/runs-cluster"))
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        proc = pipeline(synthetic, "fit", "--config", "cluster.toml", "--scheduler", cluster.scheduler_address)
    assert "4 done" in proc.stdout
    threaded, distributed = _runs(synthetic / "out/runs"), _runs(synthetic / "out/runs-cluster")
    assert threaded == distributed and len(threaded) == 4
    for name in threaded:
        a = load_file(str(synthetic / "out/runs" / name / "maps.safetensors"))
        b = load_file(str(synthetic / "out/runs-cluster" / name / "maps.safetensors"))
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_a_failing_run_is_reported_and_the_others_finish(synthetic):
    """A run whose input is damaged on disk fails alone: one line, exit 1, the other run is fitted,
    evaluated and reported."""
    import shutil

    import h5py

    bad = synthetic / "bad"
    shutil.copytree(synthetic, bad, ignore=shutil.ignore_patterns("out"))
    cfg = CONFIG.format(runs="out/runs").replace(
        'variants = ["mse", "mse+cyc+kd-lm", "lstsq", "procrustes"]', 'variants = ["lstsq"]'
    )
    (bad / "pipeline.toml").write_text(
        cfg + '\n[[encoders]]\nname = "src2"\nmodel = "imported"\n\n[extract]\nsplits = []\n'
    )
    import_synthetic(bad)
    for split in ("train", "test"):  # a second imported encoder with the source's features
        _import(
            bad,
            f"src_{split}.npy",
            "--encoder",
            "src2",
            "--dataset",
            "syn",
            "--split",
            split,
            "--labels",
            f"y_{split}.npy",
        )
    (damaged,) = (bad / "out/cache/features").glob("syn_train_src2_*.h5")
    with h5py.File(damaged, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with damaged.open("r+b") as f:  # flip a byte of the first chunk, as a bad disk would
        f.seek(offset + 100)
        byte = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = pipeline(bad, "fit", check=False)
    assert proc.returncode == 1
    assert "1 done, 0 already finished, 1 failed" in proc.stdout and f"{damaged.name} is damaged" in proc.stdout
    run = pipeline(bad, "run", "--no-progress", check=False)
    assert run.returncode == 1 and "0 done, 1 already finished, 1 failed" in run.stdout
    header = next(line for line in run.stdout.splitlines() if line.startswith("| Variant |"))
    assert header.startswith("| Variant | src / syn |") and "src2" not in header, run.stdout
    assert any(line.startswith("| lstsq |") for line in run.stdout.splitlines()), run.stdout
    assert "BAD" in pipeline(bad, "cache", "verify", check=False).stdout


def test_sigkill_mid_sweep_then_rerun_equals_uninterrupted(synthetic):
    """kill -9 right after the 2nd run of 6 is written (a known point, however busy the machine is)."""
    import signal

    from helpers import Stopped

    cfg = (synthetic / "pipeline.toml").read_text()
    (synthetic / "killed.toml").write_text(cfg.replace('runs_dir = "out/runs"', 'runs_dir = "out/runs-killed"'))
    grid = ["--variants", "mse", "--variants", "lstsq", "--seeds", "0", "--seeds", "1", "--seeds", "2"]
    args = ["fit", "--config", "killed.toml", *grid, "--workers", "1"]
    proc = Stopped(synthetic, *args, point="fit.run_done", k=2)
    proc.wait_stopped()
    assert proc.kill(signal.SIGKILL) == -signal.SIGKILL
    runs = synthetic / "out/runs-killed"
    assert len(_runs(runs)) == 2  # killed mid-sweep: exactly the runs written so far
    rerun = pipeline(synthetic, *args)
    assert "4 done, 2 already finished, 0 failed" in rerun.stdout
    (synthetic / "whole.toml").write_text(cfg.replace('runs_dir = "out/runs"', 'runs_dir = "out/runs-whole"'))
    pipeline(synthetic, "fit", "--config", "whole.toml", *grid, "--workers", "1")
    names = _runs(runs)
    assert names == _runs(synthetic / "out/runs-whole") and len(names) == 6
    for name in names:
        a = load_file(str(runs / name / "maps.safetensors"))
        b = load_file(str(synthetic / "out/runs-whole" / name / "maps.safetensors"))
        assert all(np.array_equal(a[k], b[k]) for k in a), name
