"""Text encoding at ImageNet scale (1,000 classes x 80 templates): batch by batch into a resumable
partial file with a progress bar; a real kill -9 mid-way, then a re-run that goes on from the prompts
done and ends bit-identical to an uninterrupted run."""

import signal

import h5py
import numpy as np
from helpers import CLIP, CNN, PATHS, SHAPES, Stopped, inproc, write_config

WORLD = (
    PATHS
    + CLIP
    + """templates_file = "templates.json"
classfree_prompts = "classfree.txt"
batch_size = 16
"""
    + CNN
    + SHAPES
)


def text_files(folder):
    """Every finished text file's numbers (as bytes), strings and checksum, by file name."""
    out = {}
    for p in sorted((folder / "out/cache/text").glob("*.h5")):
        with h5py.File(p) as f:
            out[p.name] = {k: f[k][:].tobytes() for k in ("embeddings", "class_of_prompt")}
            out[p.name].update(
                {k: f[k].asstr()[:].tolist() for k in ("prompts", "classnames")}, sha256=f.attrs["embeddings_sha256"]
            )
    return out


def test_sigkill_mid_text_encoding_resumes_from_the_rows_done(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
        write_config(folder, WORLD, train=16, test=16, batch=16, templates="one")
        (folder / "templates.json").write_text('{"one": ["a photo of a {c}."]}')  # 64 classes: 64 prompts
        (folder / "classfree.txt").write_text("something red\nsomething round\n")
    first = Stopped(killed, "extract", "--no-progress", point="extract.text_batch", k=2)
    first.wait_stopped()
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL
    assert "prompt/s" not in first.output()  # --no-progress is respected
    (partial,) = (killed / "out/cache/text").glob("*.partial")
    with h5py.File(partial) as f:
        assert f.attrs["rows_done"] == 32 and f["embeddings"].shape == (32, f.attrs["dim"])
    # the re-run stops after its first batch: that batch went on from prompt 32, not from 0
    again = Stopped(killed, "extract", point="extract.text_batch", k=1)
    again.wait_stopped()
    with h5py.File(partial, "r", locking=False) as f:  # the writer has it open, flushed
        assert f.attrs["rows_done"] == 48
    again.resume()
    code, out = again.finish()
    assert code == 0, out
    assert f"resuming {partial.name} at prompt 32 of 64" in out and "prompt/s" in out
    inproc(whole, "extract", "--no-progress")
    a, b = text_files(whole), text_files(killed)
    assert len(a) == 2 and a == b
    assert not list((killed / "out/cache/text").glob("*.partial"))


def test_text_writer_resumes_only_with_the_same_settings(tmp_path):
    """In-process: a closed partial resumes at its rows_done with equal settings, starts again with other
    ones (another batch size changes the numbers), and finishes into a file `read_text` accepts."""
    from zoomshot.cache import store

    emb = np.arange(40, dtype=np.float32).reshape(10, 4)
    args = (tmp_path / "t.h5", 4, [f"p{i}" for i in range(10)], np.arange(10) // 5, ["a", "b"], {"clip": "c"})
    w = store.TextWriter(*args, {"batch_size": 4})
    w.append(emb[:4])
    w.close()
    said = []
    w = store.TextWriter(*args, {"batch_size": 4}, said.append)
    assert w.rows_done == 4 and not said
    w.close()
    w = store.TextWriter(*args, {"batch_size": 5}, said.append)
    assert w.rows_done == 0 and "batch_size: 4 -> 5" in said[0]
    w.append(emb[:5])
    w.append(emb[5:])
    back = store.read_text(w.finish())
    np.testing.assert_array_equal(back.embeddings, emb)
    assert back.prompts == args[2] and back.classnames == ["a", "b"]
    assert back.class_of_prompt.tolist() == [0] * 5 + [1] * 5
    assert (
        back.attrs["embeddings_sha256"]
        == store.read_text(
            store.write_text(tmp_path / "whole.h5", store.TextEmbeddings(emb, args[2], args[3], args[4], {}))
        ).attrs["embeddings_sha256"]
    )
