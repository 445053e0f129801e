"""Several commands on one output folder at once, with real subprocesses stopped at known points
(`cache/faults.py`): nothing is corrupted, no live file is deleted, no finished output is written twice,
and each process says what it waits for or skips. Also Ctrl-C: one line, exit 130, resumable."""

import signal

import pytest
from helpers import CLIP, CNN, PATHS, SHAPES, Stopped, feature_rows, inproc, wait_until, write_config

WORLD = (
    PATHS
    + CLIP
    + CNN
    + SHAPES
    + """
[fit]
variants = ["mse", "lstsq"]
fractions = [0.5, 1.0]
epochs = [3]
workers = 1
"""
)


@pytest.fixture
def world(tmp_path):
    write_config(tmp_path, WORLD, train=192, test=64, batch=32)
    return tmp_path


def test_two_extracts_on_one_cache(world, tmp_path_factory):
    first = Stopped(world, "extract", "--no-progress", point="extract.batch", k=2)
    first.wait_stopped()  # it holds the train files' locks, mid-split
    second = Stopped(world, "extract", "--no-progress", point="never", k=1)
    wait_until(lambda: "waiting for" in second.output(), second)
    assert list((world / "out/cache/features").glob("*.partial"))  # the live partial files are kept
    first.resume()
    code1, out1 = first.finish()
    code2, out2 = second.finish()
    assert code1 == 0 and code2 == 0, (out1, out2)
    assert "extract: 6 cache file(s) written" in out1
    assert "written by another process meanwhile" in out2 or "everything was cached already" in out2, out2
    assert "extract: 0 cache file(s) written" in out2  # nothing written twice
    alone = tmp_path_factory.mktemp("alone")
    write_config(alone, WORLD, train=192, test=64, batch=32)
    inproc(alone, "extract", "--no-progress")
    assert feature_rows(world) == feature_rows(alone)  # and nothing was corrupted
    assert "6 ok, 0 with problems" in inproc(world, "cache", "verify").stdout  # 4 feature + 2 text files


def test_two_sweeps_over_one_grid_fit_each_run_once(world):
    inproc(world, "extract", "--no-progress")
    first = Stopped(world, "fit", point="fit.fitting", k=1)
    first.wait_stopped()  # holds the lock of the run it is about to fit
    second = Stopped(world, "fit", point="never", k=1)
    wait_until(lambda: "waiting for" in second.output(), second)
    first.resume()
    (code1, out1), (code2, out2) = first.finish(), second.finish()
    assert code1 == code2 == 0, (out1, out2)
    done = [int(out.split("fit: ")[1].split(" done")[0]) for out in (out1, out2)]
    assert sum(done) == 4, (out1, out2)  # 2 variants x 2 fractions, each fitted once
    assert "4 already finished" in inproc(world, "fit").stdout


def test_evaluate_while_a_run_is_refitted_and_rm_of_a_live_file(world):
    inproc(world, "extract", "--no-progress")
    inproc(world, "fit")
    runs = sorted(p for p in (world / "out/runs").iterdir() if not p.name.startswith("."))
    (runs[0] / "maps.safetensors").write_bytes(b"torn")  # a damaged run: the next sweep fits it again
    fit = Stopped(world, "fit", point="fit.fitting", k=1)
    fit.wait_stopped()
    ev = inproc(world, "evaluate", "--no-progress", check=False)
    assert ev.returncode == 1 and f"run {runs[0].name} is being written by another process" in ev.stdout
    assert "evaluate: 4 result file(s) written, 1 skipped" in ev.stdout  # CLIP + the 3 sound runs
    fit.resume()
    code, out = fit.finish()
    assert code == 0 and f"re-fitting run {runs[0].name}" in out and "1 done, 3 already finished" in out
    assert "5 result file(s) written" in inproc(world, "evaluate", "--no-progress").stdout

    extract = Stopped(world, "extract", "--no-progress", "--fraction", "0.5", point="extract.batch", k=1)
    extract.wait_stopped()
    rm = inproc(world, "cache", "rm", "*.partial", check=False)
    assert rm.returncode == 1 and rm.stdout.count("another process is writing it") == 2, rm.stdout
    assert len(list((world / "out/cache/features").glob("*.partial"))) == 2
    extract.resume()
    assert extract.finish()[0] == 0


def test_ctrl_c_is_one_line_exit_130_and_resumes(world, tmp_path_factory):
    proc = Stopped(world, "extract", "--no-progress", point="extract.batch", k=2)
    proc.wait_stopped()
    assert proc.kill(signal.SIGINT) == 130
    lines = [ln for ln in proc.output().splitlines() if ln.strip() and not ln.startswith(("loading", "WARNING"))]
    assert lines == ["interrupted: re-run the same command to resume"], proc.output()
    inproc(world, "extract", "--no-progress")
    alone = tmp_path_factory.mktemp("alone")
    write_config(alone, WORLD, train=192, test=64, batch=32)
    inproc(alone, "extract", "--no-progress")
    assert feature_rows(world) == feature_rows(alone)
