"""Test helpers: run the real `pipeline` CLI in a subprocess, write small configs."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
REPO = Path(__file__).resolve().parents[1]


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
TINY_WORLD = PATHS + CLIP + CNN + VIT + """
[[datasets]]
name = "shapes"
kind = "shapes"
options = {{ train_size = {train}, test_size = {test}, seed = 0, image_size = 64 }}

[extract]
batch_size = {batch}
device = "cpu"

[fit]
variants = ["mse", "lstsq"]
fractions = [0.5, 1.0]
epochs = [5]
workers = 2
"""


def write_config(folder: Path, text: str = TINY_WORLD, **fmt) -> Path:
    fmt = {"train": 256, "test": 128, "batch": 64, "templates": "shapes", **fmt}
    path = folder / "pipeline.toml"
    path.write_text(text.format(**fmt))
    return path


def pipeline(folder: Path, *args: str, check: bool = True, prelude: str = "",
             env: dict | None = None) -> subprocess.CompletedProcess:
    """`pipeline ARGS` in `folder`; `prelude` is Python run first in the same process."""
    code = f"{prelude}\nimport sys\nfrom zoomshot.cli.main import main\nsys.argv = ['pipeline', *{list(args)!r}]\nmain()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, env={**ENV, **(env or {})}, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
