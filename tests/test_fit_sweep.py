"""Fit through the real CLI on imported synthetic features with a known answer, threaded and on a
real dask.distributed cluster."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from helpers import pipeline

CONFIG = """
[paths]
cache_dir = "out/cache"
runs_dir = "{runs}"
results_dir = "out/results"
report_dir = "out/report"

[clip]
model = "imported"
classfree_prompts = "classfree.txt"

[[encoders]]
name = "src"
model = "imported"

[[datasets]]
name = "syn"
kind = "imported"

[fit]
train = ["syn:train"]
variants = ["mse", "mse+cyc+kd-lm", "lstsq", "procrustes"]
fractions = [1.0]
epochs = [40]
seeds = [0]

[evaluate]
test = ["syn:test"]
"""


def _synthetic(folder, n_classes=10, d=32, m=48, seed=0):
    """CLIP features = class centroid + noise; source = a fixed linear image of CLIP + small noise."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(n_classes, d))
    a = rng.normal(size=(m, d)) / np.sqrt(d)
    for split, n in (("train", 3000), ("test", 1000)):
        y = rng.integers(0, n_classes, n)
        t = centroids[y] + 0.9 * rng.normal(size=(n, d))
        s = t @ a.T + 0.05 * rng.normal(size=(n, m))
        np.save(folder / f"clip_{split}.npy", t.astype(np.float32))
        np.save(folder / f"src_{split}.npy", s.astype(np.float32))
        np.save(folder / f"y_{split}.npy", y)
    templates = np.repeat(centroids, 3, axis=0) + 0.05 * rng.normal(size=(3 * n_classes, d))
    np.save(folder / "class_text.npy", templates.astype(np.float32))
    (folder / "classnames.txt").write_text("\n".join(f"class {i}" for i in range(n_classes)))
    mixes = rng.dirichlet(np.ones(n_classes) * 0.3, size=60) @ centroids
    np.save(folder / "classfree.npy", mixes.astype(np.float32))
    (folder / "classfree.txt").write_text("\n".join(f"prompt {i}" for i in range(60)))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    _synthetic(folder)
    (folder / "pipeline.toml").write_text(CONFIG.format(runs="out/runs"))
    for split in ("train", "test"):
        for enc in ("clip", "src"):
            pipeline(folder, "cache", "import", f"{enc}_{split}.npy", "--encoder", enc, "--dataset", "syn",
                     "--split", split, "--labels", f"y_{split}.npy")
    pipeline(folder, "cache", "import", "class_text.npy", "--text", "class-prompts", "--dataset", "syn",
             "--classnames", "classnames.txt")
    pipeline(folder, "cache", "import", "classfree.npy", "--text", "classfree", "--dataset", "syn",
             "--prompts", "classfree.txt")
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


def test_distributed_sweep_gives_the_same_maps_as_threads(synthetic):
    from dask.distributed import LocalCluster

    (synthetic / "cluster.toml").write_text(CONFIG.format(runs="out/runs-cluster"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        proc = pipeline(synthetic, "fit", "--config", "cluster.toml", "--scheduler", cluster.scheduler_address)
    assert "4 done" in proc.stdout
    threaded = sorted(p.name for p in (synthetic / "out/runs").iterdir())
    distributed = sorted(p.name for p in (synthetic / "out/runs-cluster").iterdir())
    assert threaded == distributed and len(threaded) == 4
    for name in threaded:
        a = load_file(str(synthetic / "out/runs" / name / "maps.safetensors"))
        b = load_file(str(synthetic / "out/runs-cluster" / name / "maps.safetensors"))
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_a_failing_run_is_reported_and_the_others_finish(synthetic):
    cfg = (synthetic / "pipeline.toml").read_text()
    (synthetic / "bad.toml").write_text(
        cfg.replace('runs_dir = "out/runs"', 'runs_dir = "out/runs-bad"')
        .replace('results_dir = "out/results"', 'results_dir = "out/results-bad"')
        .replace('variants = ["mse", "mse+cyc+kd-lm", "lstsq", "procrustes"]', 'variants = ["broken", "lstsq"]')
        .replace("fractions = [1.0]", "fractions = [1.0]\n[fit.definitions.broken]\n"
                 'method = "lstsq"\nnot_a_param = 1') + "\n[extract]\nsplits = []\n")
    proc = pipeline(synthetic, "fit", "--config", "bad.toml", check=False)
    assert proc.returncode == 1
    assert "1 done, 0 already finished, 1 failed" in proc.stdout and "not_a_param" in proc.stdout
    run = pipeline(synthetic, "run", "--config", "bad.toml", "--no-progress", check=False)
    assert run.returncode == 1 and "0 done, 1 already finished, 1 failed" in run.stdout
    assert "| src | lstsq |" in run.stdout            # the run that fitted is still evaluated and reported


def test_sigkill_mid_sweep_then_rerun_equals_uninterrupted(synthetic):
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import ENV

    cfg = (synthetic / "pipeline.toml").read_text()
    (synthetic / "killed.toml").write_text(cfg.replace('runs_dir = "out/runs"', 'runs_dir = "out/runs-killed"'))
    grid = ["--variants", "mse", "--variants", "lstsq", "--seeds", "0", "--seeds", "1", "--seeds", "2"]
    args = ["fit", "--config", "killed.toml", *grid, "--workers", "1"]
    code = f"import sys\nfrom zoomshot.cli.main import main\nsys.argv=['pipeline', *{args!r}]\nmain()"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=synthetic, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = synthetic / "out/runs-killed"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (runs.exists() and any(runs.glob("*/run.json"))):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert 1 <= len(finished) < 6                       # killed mid-sweep: some runs done, not all
    rerun = pipeline(synthetic, *args)
    assert f"{6 - len(finished)} done, {len(finished)} already finished, 0 failed" in rerun.stdout
    (synthetic / "whole.toml").write_text(cfg.replace('runs_dir = "out/runs"', 'runs_dir = "out/runs-whole"'))
    pipeline(synthetic, "fit", "--config", "whole.toml", *grid, "--workers", "1")
    names = sorted(p.name for p in runs.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in (synthetic / "out/runs-whole").iterdir()) and len(names) == 6
    for name in names:
        a = load_file(str(runs / name / "maps.safetensors"))
        b = load_file(str(synthetic / "out/runs-whole" / name / "maps.safetensors"))
        assert all(np.array_equal(a[k], b[k]) for k in a), name
