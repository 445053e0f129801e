"""A `.partial` file that another process has open is in use, not damaged: a resumed extraction
refuses with one line and keeps every row; `cache ls` / `cache verify` say it is being written.
Real processes, stopped at known points (marker files), never after a guessed delay."""

import signal
import subprocess
import sys

import h5py
from helpers import CLIP, CNN, ENV, PATHS, SHAPES, Stopped, inproc, wait_until, write_config

WORLD = PATHS + CLIP + CNN + SHAPES


class Reader:
    """A process that opens `path` read-only with h5py and keeps it open until `release()`."""

    def __init__(self, path, folder):
        self.marker = folder / ".reader-open"
        code = (
            f"import h5py, pathlib, time\nf = h5py.File({str(path)!r}, 'r')\n"
            f"m = pathlib.Path({str(self.marker)!r})\nm.write_text('open')\n"
            "while m.exists():\n    time.sleep(0.02)\n"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=ENV)
        wait_until(lambda: self.marker.exists() or self.proc.poll() is not None)
        assert self.proc.poll() is None, "the reader could not open the file"

    def release(self):
        self.marker.unlink()
        assert self.proc.wait(60) == 0


def test_a_partial_open_in_a_reader_is_never_deleted_and_a_live_one_is_not_damaged(tmp_path):
    write_config(tmp_path, WORLD, train=192, test=64, batch=32)
    live = Stopped(tmp_path, "extract", "--no-progress", point="extract.batch", k=2)
    live.wait_stopped()  # two batches of the train split written
    listing = inproc(tmp_path, "cache", "ls").stdout
    partials = [ln for ln in listing.splitlines() if ".partial" in ln]
    assert partials and all(ln.startswith("being written") for ln in partials), listing
    verify = inproc(tmp_path, "cache", "verify")
    assert verify.returncode == 0 and f"{len(partials)} busy" in verify.stdout, verify.stdout
    live.kill(signal.SIGKILL)

    (partial, *_) = sorted((tmp_path / "out/cache/features").glob("*.partial"))
    with h5py.File(partial, "r") as f:
        rows = int(f.attrs["rows_done"])
    assert rows == 64
    reader = Reader(partial, tmp_path)
    try:
        refused = inproc(tmp_path, "extract", "--no-progress", check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"{partial.name} is open in another process (pid {reader.proc.pid})" in refused.stderr
        assert "starting" not in refused.stdout and "damaged" not in refused.stderr
        assert partial.exists()
        with h5py.File(partial, "r") as f:
            assert int(f.attrs["rows_done"]) == rows  # not a row lost
    finally:
        reader.release()
    resumed = inproc(tmp_path, "extract", "--no-progress")
    assert "again" not in resumed.stdout, resumed.stdout  # resumed, not started again
    assert "0 with problems" in inproc(tmp_path, "cache", "verify").stdout
