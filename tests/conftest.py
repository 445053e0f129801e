"""Shared test set-up: offline, CPU, small thread counts (DESIGN.md section 10)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def default_world(tmp_path_factory):
    """The repository's pipeline.toml end to end, unchanged (README's tables are its report), run once
    for every module that reads the default world."""
    from helpers import pipeline, shipped_config, write_toml

    folder = tmp_path_factory.mktemp("default")
    write_toml(folder, shipped_config())
    pipeline(folder, "run", "--no-progress")
    return folder


@pytest.fixture(scope="session")
def default_exports(default_world):
    """CLIP and the default world's cnn lstsq run (all rows) exported to exports/clip and exports/cnn."""
    from helpers import inproc, run_named

    run = run_named(default_world, "cnn", "lstsq")
    inproc(default_world, "export", run, "--out", "exports/cnn")
    inproc(default_world, "export", "clip", "--out", "exports/clip")
    return default_world, run


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls gain nothing from threads, and on a shared 2-core machine oversubscription slows them 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
