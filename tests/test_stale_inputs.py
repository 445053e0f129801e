"""Every cached number is the one its settings ask for: keys and run names are content, not place;
what changed on disk (weights, class names, images, feature or run files) is noticed; damaged files
are one line each and the rest goes on; interrupted or failed extractions recover."""

import io
import json
import os
import shutil
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import CLIP, CNN, PATHS, REPO, SHAPES, Stopped, feature_rows, inproc, pipeline, run_main, synthetic_project
from safetensors.torch import load_file, save_file

# ------------------------------------------------------------------ imported synthetic features (fast)


def _ok(result):
    code, out, err = result
    assert code == 0, (out, err)
    return out


@pytest.fixture
def synthetic(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    synthetic_project(folder, ["mse", "lstsq"])
    _ok(run_main(folder, "fit"))
    return folder


def _run_dirs(folder):
    return sorted(p for p in (folder / "out/runs").iterdir() if not p.name.startswith("."))


def test_a_moved_or_copied_folder_keeps_its_runs(synthetic, tmp_path):
    copy = tmp_path / "elsewhere" / "b"
    shutil.copytree(synthetic, copy)
    assert "0 done, 2 already finished" in _ok(run_main(copy, "fit"))
    assert [p.name for p in _run_dirs(copy)] == [p.name for p in _run_dirs(synthetic)]
    shutil.rmtree(synthetic)  # moved, not copied: the runs still evaluate
    assert "3 result file(s) written" in _ok(run_main(copy, "evaluate", "--no-progress"))


def test_run_json_holds_the_resolved_settings_and_names_by_them(synthetic):
    from zoomshot.fit.trainer import TrainConfig

    record = json.loads(
        next(
            p
            for p in _run_dirs(synthetic)
            if "mse" in (p / "run.json").read_text() and json.loads((p / "run.json").read_text())["variant"] == "mse"
        )
        .joinpath("run.json")
        .read_text()
    )
    defaults = {k: v for k, v in vars(TrainConfig()).items() if k not in ("seed", "device")}
    assert set(record["params"]) == set(defaults)  # every default filled in, in the record
    assert record["params"]["lr"] == defaults["lr"] and record["params"]["epochs"] == 3
    assert record["encoder_key"] and record["clip_key"] and len(record["inputs"]["checksums"]) == 2
    assert not any(str(synthetic) in json.dumps(v) for k, v in record.items() if k != "versions")  # no path
    names = lambda *args: _ok(run_main(synthetic, "fit", "--dry-run", "--variants", "mse", *args))  # noqa: E731
    text = (synthetic / "pipeline.toml").read_text()
    (synthetic / "pipeline.toml").write_text(text.replace("[fit]", f"[fit]\ntrainer = {{ lr = {defaults['lr']} }}"))
    assert names().split()[0] == record["name"]  # a default said aloud is the same run
    (synthetic / "pipeline.toml").write_text(text.replace("[fit]", "[fit]\ntrainer = { lr = 0.5 }"))
    assert names().split()[0] != record["name"]


def test_reimported_inputs_make_a_finished_run_stale(synthetic):
    (train,) = (synthetic / "out/cache/features").glob("syn_train_src_*.h5")
    _ok(run_main(synthetic, "cache", "rm", train.name))
    np.save(synthetic / "other.npy", np.load(synthetic / "src_train.npy")[:, ::-1].copy())
    _ok(
        run_main(
            synthetic,
            "cache",
            "import",
            "other.npy",
            "--encoder",
            "src",
            "--dataset",
            "syn",
            "--split",
            "train",
            "--labels",
            "y_train.npy",
        )
    )
    code, out, err = run_main(synthetic, "fit")
    assert code == 0 and "2 done, 0 already finished" in out and "its input files changed" in err, (out, err)


def test_damaged_runs_and_files_are_one_line_each_and_the_rest_goes_on(synthetic):
    mse, lstsq = sorted(_run_dirs(synthetic), key=lambda p: json.loads((p / "run.json").read_text())["variant"])[:2]
    data = (mse / "maps.safetensors").read_bytes()
    (mse / "maps.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    code, out, _ = run_main(synthetic, "evaluate", "--no-progress")
    assert code == 1 and f"skip: run {mse.name}: maps.safetensors is damaged" in out
    assert "evaluate: 2 result file(s) written, 1 skipped" in out  # CLIP and lstsq
    (lstsq / "run.json").write_text('{"name": "x", "trunc')
    code, out, _ = run_main(synthetic, "evaluate", "--no-progress")
    assert (
        code == 1 and f"run {lstsq.name}: run.json is damaged" in out and "1 result file(s) written, 2 skipped" in out
    )

    (text,) = (synthetic / "out/cache/text").glob("syn-classes_*.h5")
    with h5py.File(text, "r") as f:
        emb = f["embeddings"]  # chunked (with checksums) since text writes are resumable
        offset = emb.id.get_chunk_info(0).byte_offset if emb.chunks else emb.id.get_offset()
    with text.open("r+b") as f:  # one flipped byte
        f.seek(offset + 5)
        b = f.read(1)
        f.seek(offset + 5)
        f.write(bytes([b[0] ^ 0x40]))
    code, out, err = run_main(synthetic, "evaluate", "--no-progress")
    # the chunk's fletcher32 (or, for a file written whole, the embeddings' sha256) catches it: one line
    assert code == 1 and f"cache file {text.name} is damaged (" in out, (out, err)
    assert "Traceback" not in out + err


def test_a_joined_file_with_a_missing_shard_is_never_read(tmp_path):
    from zoomshot.cache import catalog, store
    from zoomshot.cache.errors import PipelineError
    from zoomshot.cache.layout import shard_path
    from zoomshot.extract.shards import join

    target = tmp_path / "features" / "d_train_e_abc.h5"
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    shards = []
    for i, part in enumerate((slice(0, 6), slice(6, 10))):
        w = store.FeatureWriter(shard_path(target, i, 2), 4, {"encoder": "e"}, {"batch_size": 6})
        idx = np.arange(10)[part]
        w.append(rows[part], idx, idx % 3, len(idx))
        shards.append(w.finish())
    join(target, shards)
    np.testing.assert_array_equal(store.read_features(target).features, rows)
    assert catalog.verify(target) == [] and catalog.info(target)["problems"] == []
    shards[1].unlink()
    with pytest.raises(PipelineError, match="joined from shards and shard .*shard001-of-002.h5 is missing"):
        store.read_features(target)
    assert "is missing" in catalog.info(target)["problems"][0]
    assert "is missing" in catalog.verify(target)[0]


# ------------------------------------------------------------- the world with real models (subprocesses)
WORLD = (
    PATHS
    + CLIP
    + CNN.replace('model = "test_resnet"', 'model = "test_resnet"\npretrained = "cnn.safetensors"')
    + SHAPES
    + """
[fit]
variants = ["lstsq"]
"""
)


def _world(folder: Path, train=128, test=64, batch=32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "extract/assets/weights/tiny_cnn.safetensors", folder / "cnn.safetensors")
    (folder / "pipeline.toml").write_text(WORLD.format(templates="shapes", train=train, test=test, batch=batch))
    return folder


def _attr(path, name):
    with h5py.File(path, "r") as f:
        return f.attrs[name]


def _acc(folder):
    return {
        p.parent.name: json.loads(p.read_text())["metrics"]["acc1"]
        for p in (folder / "out/results").rglob("shapes-test.json")
        if p.parent.name != "clip"
    }


def test_changed_weights_never_score_old_runs_on_new_features(tmp_path):
    folder = _world(tmp_path / "w")
    inproc(folder, "run", "--no-progress")
    (old_run, acc) = next(iter(_acc(folder).items()))
    weights = load_file(str(folder / "cnn.safetensors"))
    save_file(
        {k: (v + 0.3 * v.std() if v.is_floating_point() and v.numel() > 1 else v) for k, v in weights.items()},
        str(folder / "cnn.safetensors"),
    )  # the file rewritten in place
    assert "2 cache file(s) written" in inproc(folder, "extract", "--no-progress").stdout  # new cnn features
    inproc(folder, "evaluate", "--no-progress", "--all-runs")
    assert _acc(folder) == {old_run: acc}  # the old run is still scored on the features it was fitted on
    assert "1 done, 0 already finished" in inproc(folder, "fit").stdout  # the new weights: a new run
    record = json.loads((folder / "out/runs" / old_run / "run.json").read_text())
    (old_features,) = [
        p
        for p in (folder / "out/cache/features").glob("shapes_test_cnn_*.h5")
        if _attr(p, "encoder_key") == record["encoder_key"]
    ]
    inproc(folder, "cache", "rm", old_features.name)
    ev = inproc(folder, "evaluate", "--no-progress", "--all-runs", check=False)
    assert ev.returncode == 1 and f"skip run {old_run} (cnn, lstsq)" in ev.stdout
    assert "fitted with encoder 'cnn' of other weights or settings than the config's" in ev.stdout
    new = _acc(folder)
    assert len(new) == 2 and new[old_run] == acc  # its old result file stays; the new run has its own


def _tree(root: Path, counts: dict[str, int]) -> None:
    from zoomshot.extract.world import ShapesWorld

    world = ShapesWorld("train", size=64, seed=0)
    i = 0
    for name, n in counts.items():
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            world.image(i).save(root / "train" / name / f"{k}.png")
            i += 1


def test_edited_class_names_and_added_images_are_new_inputs(tmp_path):
    folder = tmp_path / "tree"
    _tree(folder / "data", {"a": 3, "b": 3})
    (folder / "names.txt").write_text("red circle\nblue square\n")
    (folder / "pipeline.toml").write_text(
        PATHS
        + CLIP.format(templates="shapes")
        + """
[[datasets]]
name = "mine"
kind = "imagefolder"
root = "data"
options = { classnames_file = "names.txt" }

[extract]
splits = ["mine:train"]
batch_size = 4
device = "cpu"
"""
    )
    assert "3 cache file(s) written" in inproc(folder, "extract", "--no-progress").stdout  # + both text files
    again = inproc(folder, "extract", "--no-progress").stdout
    assert "everything was cached already" in again
    (folder / "names.txt").write_text("red circle\ngreen star\n")
    assert "2 cache file(s) written" in inproc(folder, "extract", "--no-progress").stdout
    texts = sorted((folder / "out/cache/text").glob("mine-classes_*.h5"), key=lambda p: p.stat().st_mtime_ns)
    with h5py.File(texts[-1]) as f:
        assert [s.decode() for s in f["classnames"][:]] == ["red circle", "green star"]
    _tree(folder / "data", {"a": 4})  # one image added
    assert "1 cache file(s) written" in inproc(folder, "extract", "--no-progress").stdout
    newest = max((folder / "out/cache/features").glob("mine_train_*.h5"), key=lambda p: p.stat().st_mtime_ns)
    with h5py.File(newest) as f:
        assert f["features"].shape[0] == 7


def test_a_full_disk_mid_extraction_is_one_line_and_the_rerun_recovers(tmp_path):
    full, whole = _world(tmp_path / "full", train=512, batch=64), _world(tmp_path / "whole", train=512, batch=64)
    # the file-size limit below holds for the whole process tree: decoding workers would hit it first,
    # in their shared-memory batches, where a real full disk does not reach
    config = full / "pipeline.toml"
    config.write_text(config.read_text().replace('device = "cpu"', 'device = "cpu"\nnum_workers = 0', 1))
    prelude = (
        "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (90_000, 90_000))"
    )  # files stop growing at 90 kB
    proc = pipeline(full, "extract", "--no-progress", prelude=prelude, check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert list((full / "out/cache/features").glob("*.partial"))
    inproc(full, "extract", "--no-progress")
    inproc(whole, "extract", "--no-progress")
    assert feature_rows(full) == feature_rows(whole) and len(feature_rows(full)) == 4


def test_resuming_with_other_settings_starts_again(tmp_path):
    killed, whole = _world(tmp_path / "killed"), _world(tmp_path / "whole")
    proc = Stopped(killed, "extract", "--no-progress", point="extract.batch", k=2)
    proc.wait_stopped()
    proc.kill(signal.SIGKILL)
    again = inproc(killed, "extract", "--no-progress", "--batch-size", "16")
    assert again.stdout.count("again: its settings differ (batch_size: 32 -> 16)") == 2, again.stdout
    inproc(whole, "extract", "--no-progress", "--batch-size", "16")
    assert feature_rows(killed) == feature_rows(whole)


# ------------------------------------------------- [extract] content_hash: images rewritten in place
CONTENT_CONFIG = (
    PATHS
    + CLIP.format(templates="shapes")
    + """
[[datasets]]
name = "mine"
kind = "imagefolder"
root = "data"

[extract]
splits = ["mine:train"]
batch_size = 4
device = "cpu"
num_workers = 0
content_hash = {content_hash}
"""
)


@pytest.mark.parametrize("content_hash", [True, False])
def test_an_image_rewritten_in_place_is_stale_only_with_content_hash(tmp_path, content_hash):
    """One image rewritten with other pixels and the same byte size (uncompressed PNG), its mtime set back:
    no directory changes. With content_hash the next extraction says why and extracts anew; without, the
    listing is the same and everything is cached (the trade-off docs/cache.md states)."""
    from PIL import Image

    from zoomshot.extract.world import ShapesWorld

    world = ShapesWorld("train", size=8, seed=0)
    for i in range(6):
        (tmp_path / "data/train" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        world.image(i).save(tmp_path / "data/train" / "ab"[i % 2] / f"{i}.png", compress_level=0)
    (tmp_path / "pipeline.toml").write_text(CONTENT_CONFIG.format(content_hash=str(content_hash).lower()))
    inproc(tmp_path, "extract", "--no-progress")
    image = tmp_path / "data/train/a/0.png"
    st, other = image.stat(), io.BytesIO()
    Image.fromarray(255 - np.asarray(world.image(0))).save(other, format="PNG", compress_level=0)
    assert len(other.getvalue()) == st.st_size and other.getvalue() != image.read_bytes()
    with image.open("r+b") as f:  # in place: the same file, no directory entry changes
        f.write(other.getvalue())
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = pipeline(tmp_path, "extract", "--no-progress")
    if content_hash:
        assert (
            "mine:train: the bytes of its files (content_hash) changed since the last extraction: its "
            "features are extracted anew"
            in proc.stdout
            and "1 cache file(s) written" in proc.stdout
        ), proc.stdout
    else:
        assert "everything was cached already" in proc.stdout and "changed" not in proc.stdout, proc.stdout


def test_a_bad_content_hash_setting_is_one_line(tmp_path):
    (tmp_path / "pipeline.toml").write_text(CONTENT_CONFIG.format(content_hash='"yes"'))
    proc = pipeline(tmp_path, "extract", "--no-progress", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "content_hash" in lines[0] and "Traceback" not in proc.stderr, (
        proc.stderr
    )
