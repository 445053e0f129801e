"""Test helpers: run the real `pipeline` CLI in a subprocess, write small configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import tomli_w

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
REPO = Path(__file__).resolve().parents[1]


#: A trainer test runs twice: trained, and as its control with the optimiser frozen (lr = 0) from the same
#: random start, which must miss the bar (a test its control passes guards the start, not the training).
#: Use as `@TRAINS_OR_FROZEN` and pass `**FREEZE[frozen]` to the trainer.
FREEZE = {False: {}, True: {"lr": 0.0}}


def trains_or_frozen(test):
    import pytest

    return pytest.mark.parametrize("frozen", [False, True], ids=["trains", "frozen-control"])(test)


def shipped_config() -> dict:
    """The repository's pipeline.toml as a dict (its weights are `assets:` names, so it runs from any folder)."""
    return tomllib.loads((REPO / "pipeline.toml").read_text())


def write_toml(folder: Path, data: dict) -> Path:
    path = folder / "pipeline.toml"
    path.write_text(tomli_w.dumps(data))
    return path


# TOML pieces (str.format templates, so literal braces are doubled), put together per test.
PATHS = """
[paths]
cache_dir = "out/cache"
runs_dir = "out/runs"
results_dir = "out/results"
report_dir = "out/report"
"""
CLIP = """
[clip]
model = "zoomshot-tiny-clip"
templates = "{templates}"
"""
CNN = """
[[encoders]]
name = "cnn"
model = "test_resnet"
options = {{ pretrained_cfg_overlay = {{ input_size = [3, 64, 64], crop_pct = 1.0 }} }}
"""
VIT = """
[[encoders]]
name = "vit"
model = "test_vit"
options = {{ img_size = 64, pretrained_cfg_overlay = {{ input_size = [3, 64, 64], crop_pct = 1.0 }} }}
"""
SHAPES = """
[[datasets]]
name = "shapes"
kind = "shapes"
options = {{ train_size = {train}, test_size = {test}, seed = 0, image_size = 64 }}

[extract]
batch_size = {batch}
device = "cpu"
"""
TINY_WORLD = (
    PATHS
    + CLIP
    + CNN
    + VIT
    + SHAPES
    + """
[fit]
variants = ["mse", "lstsq"]
fractions = [0.5, 1.0]
epochs = [5]
workers = 2
"""
)


def write_config(folder: Path, text: str = TINY_WORLD, **fmt) -> Path:
    fmt = {"train": 256, "test": 128, "batch": 64, "templates": "shapes", **fmt}
    path = folder / "pipeline.toml"
    path.write_text(text.format(**fmt))
    return path


def feature_rows(folder: Path) -> dict[str, tuple[bytes, ...]]:
    """The bytes of every complete feature file's rows under `folder/out/cache`, by file name."""
    import h5py

    out = {}
    for p in sorted((folder / "out/cache/features").glob("*.h5")):
        with h5py.File(p) as f:
            out[p.name] = tuple(f[k][:].tobytes() for k in ("features", "index", "labels"))
    return out


def pipeline(
    folder: Path, *args: str, check: bool = True, prelude: str = "", env: dict | None = None, preexec_fn=None
) -> subprocess.CompletedProcess:
    """`pipeline ARGS` in `folder`; `prelude` is Python run first in the same process, `preexec_fn` in the
    child before it starts (e.g. `file_size_limit`)."""
    code = (
        f"{prelude}\nimport sys\nfrom zoomshot.cli.main import main\nsys.argv = ['pipeline', *{list(args)!r}]\nmain()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=folder,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        preexec_fn=preexec_fn,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def file_size_limit(limit: int):
    """A `preexec_fn` that gives the child a real `ulimit -f` of `limit` bytes, with SIGXFSZ ignored, so a
    write past it fails with EFBIG as on a full disk (shared memory included, which a full disk spares)."""

    def set_limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def one_line_error(code: int, err: str, *needles: str, exit_code: int = 2) -> str:
    """The one line that bad input or a fault gives on stderr (warnings aside), checked: the exit code, no
    traceback, and every needle in it."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("warning:", "WARNING"))]
    assert code == exit_code and len(lines) == 1 and "Traceback" not in err, (code, err)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def run_named(folder: Path, encoder: str, variant: str, fraction: float = 1.0) -> str:
    """The name of the run of `encoder` and `variant` on `fraction` under folder/zoomshot-out/runs."""
    for path in (folder / "zoomshot-out/runs").glob("*/run.json"):
        r = json.loads(path.read_text())
        if (r["encoder"], r["variant"], r["fraction"]) == (encoder, variant, fraction):
            return r["name"]
    raise AssertionError(f"no run {encoder} {variant} {fraction} under {folder}")


# ---- synthetic features with a known answer, brought in through `pipeline cache import` ----
SYNTHETIC_CONFIG = """
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


def synthetic_arrays(folder, n_classes=10, d=32, m=48, seed=0):
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


def synthetic_project(
    folder: Path, variants: list[str], epochs: int = 3, fit_table: str = "", before_import=None
) -> Path:
    """A project of `synthetic_arrays` (5 classes) imported into its cache, fitting `variants` for `epochs`
    (`fit_table`: more `[fit]` lines); `before_import(folder)` may change the arrays first."""
    synthetic_arrays(folder, n_classes=5, d=16, m=24)
    if before_import:
        before_import(folder)
    (folder / "pipeline.toml").write_text(
        SYNTHETIC_CONFIG.format(runs="out/runs")
        .replace('variants = ["mse", "mse+cyc+kd-lm", "lstsq", "procrustes"]', f"variants = {variants!r}\n{fit_table}")
        .replace("epochs = [40]", f"epochs = [{epochs}]")
        + "\n[extract]\nsplits = []\n"
    )
    return import_synthetic(folder)


def import_synthetic(folder: Path) -> Path:
    """`pipeline cache import` of every array `synthetic_arrays` wrote: both encoders' features of both splits,
    the class prompts and the class-free prompts."""
    for args in [
        (f"{enc}_{split}.npy", "--encoder", enc, "--dataset", "syn", "--split", split, "--labels", f"y_{split}.npy")
        for split in ("train", "test")
        for enc in ("clip", "src")
    ] + [
        ("class_text.npy", "--text", "class-prompts", "--dataset", "syn", "--classnames", "classnames.txt"),
        ("classfree.npy", "--text", "classfree", "--prompts", "classfree.txt"),
    ]:
        code, out, err = run_main(folder, "cache", "import", *args)
        assert code == 0, (out, err)
    return folder


# ---- in-process runs, for the many one-line-error cases (a subprocess per case would cost seconds) ----
def run_main(folder: Path, *args: str) -> tuple[int, str, str]:
    """`pipeline ARGS` through the console script's own `main()` in this process, in `folder`: exit
    code, stdout and stderr."""
    import contextlib
    import io

    from zoomshot.cli.main import main

    out, err, old = io.StringIO(), io.StringIO(), (os.getcwd(), sys.argv)
    try:
        os.chdir(folder)
        sys.argv = ["pipeline", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0
    finally:
        os.chdir(old[0])
        sys.argv = old[1]
    return code, out.getvalue(), err.getvalue()


def inproc(folder: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`run_main` with the shape of `pipeline(...)`'s result, for steps that need no process of their own."""
    code, out, err = run_main(folder, *args)
    if check and code != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({code}):\n{out}\n{err}")
    return subprocess.CompletedProcess(["pipeline", *args], code, out, err)


# ---- background processes stopped at a known point (cache/faults.py), never after a guessed delay ----
class Stopped:
    """`pipeline ARGS` started in the background, told to stop at the k-th pass of a fault point.

    `wait_stopped()` returns once it is there (it wrote the marker); then `kill(sig)` sends a real
    signal, or `resume()` lets it go on. The waits poll the file system; their limit is only a safety
    net for a broken test, not part of what is tested.
    """

    def __init__(self, folder: Path, *args: str, point: str, k: int = 1, env: dict | None = None):
        self.folder, self.marker = Path(folder), Path(folder) / f".stop-{point}-{k}-{os.getpid()}"
        self.log = Path(folder) / f".log-{point}-{k}-{os.getpid()}.txt"
        code = f"import sys\nfrom zoomshot.cli.main import main\nsys.argv=['pipeline', *{list(args)!r}]\nmain()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=folder,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env={**ENV, **(env or {}), "ZOOMSHOT_STOP_AT": f"{point}:{k}:{self.marker}"},
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_stopped(self, limit: float = 900) -> None:
        wait_until(lambda: self.marker.exists(), self, limit)

    def kill(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait()

    def resume(self) -> None:
        self.marker.unlink()

    def finish(self, limit: float = 900) -> tuple[int, str]:
        return self.proc.wait(limit), self.output()


def wait_until(condition, proc: Stopped | None = None, limit: float = 900) -> None:
    """Poll `condition` until it holds; fail at once if `proc` ended first."""
    import time

    end = time.monotonic() + limit
    while not condition():
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.proc.returncode}) before the condition held:\n{proc.output()}")
        if time.monotonic() > end:
            raise AssertionError("condition not reached (safety limit)" + (f":\n{proc.output()}" if proc else ""))
        time.sleep(0.02)
