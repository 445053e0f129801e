"""A fit's numbers depend on its settings only: not on the sweep's workers, which pool thread runs it,
what that thread ran before, the cores the process may use, or the machine's load.

The cycle and KD terms amplify the last bits of a reduction (which torch's intra-op thread count
moves) to whole points of top-1, so these fits are compared bit for bit."""

import os
import subprocess
import sys

import pytest
from helpers import SYNTHETIC_CONFIG, import_synthetic, pipeline, synthetic_arrays
from safetensors.numpy import load_file

# Small fits with cycle and KD terms, and a fit whose optimizer step is large (batch 2048 x 96 x 48).
GRID = """
[fit.definitions.wide]
method = "zoomshot"
kd_variant = "ht-ce"
steps_per_epoch = 1
batch_size = 2048
"""
FIT = [
    "fit",
    "--epochs",
    "2",
    "--seeds",
    "0",
    "--variants",
    "mse+cyc+kd-lm",
    "--variants",
    "mse+cyc+kd-htce",
    "--variants",
    "wide",
]

#: before the sweep, each thread of dask's 2-worker pool runs torch at 2 intra-op threads (a barrier
#: makes each of the two warm-up tasks take its own thread): the history a long-lived process leaves
WARM_POOL = """
import threading, dask, torch
barrier = threading.Barrier(2)
def warm(_):
    barrier.wait(timeout=600)
    torch.set_num_threads(2)
    return torch.ones(1 << 16).sum().item()
dask.compute(*[dask.delayed(warm)(i) for i in range(2)], scheduler="threads", num_workers=2)
"""
ONE_CORE = "import os\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("determinism")
    synthetic_arrays(folder, d=48, m=96)
    (folder / "pipeline.toml").write_text(SYNTHETIC_CONFIG.format(runs="out/runs"))
    return import_synthetic(folder)


def _fit(folder, runs, *args, prelude=""):
    """The sweep into runs dir `runs`; {run name: {tensor name: its bytes}} (safetensors writes its
    metadata in no fixed order, so the files' bytes are not compared)."""
    config = folder / f"{runs}.toml"
    config.write_text(SYNTHETIC_CONFIG.format(runs=runs) + GRID)
    proc = pipeline(folder, *FIT, "--config", config.name, *args, prelude=prelude)
    assert "3 done" in proc.stdout, proc.stdout
    return {
        p.parent.name: {k: v.tobytes() for k, v in load_file(p).items()}
        for p in sorted((folder / runs).glob("*/maps.safetensors"))
    }


def test_maps_are_bit_identical_whatever_the_workers_threads_cores_and_load(imported):
    reference = _fit(imported, "two-workers", "--workers", "2")
    assert len(reference) == 3
    assert _fit(imported, "one-worker", "--workers", "1") == reference
    assert _fit(imported, "warm-pool", "--workers", "2", prelude=WARM_POOL) == reference
    assert _fit(imported, "one-core", "--workers", "2", prelude=ONE_CORE) == reference
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(len(os.sched_getaffinity(0)))
    ]
    try:
        assert _fit(imported, "busy", "--workers", "2") == reference
    finally:
        for b in burners:
            b.kill()
            b.wait()
