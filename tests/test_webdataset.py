"""The `webdataset` kind on real tar shards written by the webdataset library: the same features as
the same images in an ImageFolder tree, the same samples as webdataset's own reader, resume after a
kill at a known batch, whole tar shards per dask worker, content keys, and bad input as one line."""

import io
import json
import os
import signal
import tarfile

import h5py
import numpy as np
import pytest
import webdataset as wds
from helpers import CLIP, CNN, PATHS, Stopped, inproc, pipeline, run_main, write_config
from PIL import Image

CLASSES = ["cat", "owl", "red fox"]  # the sorted order of ImageFolder's class folders
PER_CLASS = 7
CONFIG = (
    PATHS
    + CLIP
    + CNN
    + """
[[datasets]]
name = "tree"
kind = "imagefolder"
root = "imgs"

[[datasets]]
name = "wds"
kind = "webdataset"
root = "shards"
options = {options}

[extract]
splits = {splits}
batch_size = 4
device = "cpu"
num_workers = {workers}
"""
)


def _images(seed=0):
    """Smooth random images (upsampled noise) of varied sizes, as JPEG bytes, in class order."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(len(CLASSES)):
        for i in range(PER_CLASS):
            small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((80 + 8 * i, 72), Image.BICUBIC)
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=90)
            out.append((c, buf.getvalue()))
    return out


def make_data(folder, per_shard=8, images=None):
    """The same images as an ImageFolder tree (`imgs/train/<class>/<i>.jpg`) and as tar shards in
    CLIP_benchmark's layout (`shards/train/{0..}.tar`, `classnames.txt`), in the same order."""
    images = images or _images()
    for k, (c, data) in enumerate(images):
        path = folder / "imgs" / "train" / CLASSES[c].replace(" ", "_") / f"{k:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (folder / "shards" / "train").mkdir(parents=True)
    with wds.ShardWriter(str(folder / "shards" / "train" / "%d.tar"), maxcount=per_shard, verbose=0) as sink:
        for k, (c, data) in enumerate(images):
            sink.write({"__key__": f"s{k:05d}", "jpg": data, "cls": c})
    (folder / "shards" / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    return images


def config(folder, splits=("tree:train", "wds:train"), options="{}", workers=0):
    write_config(
        folder, CONFIG, splits=json.dumps(list(splits)), options=options, workers=workers, templates="openai-imagenet"
    )


def read(folder, dataset):
    """Encoder name -> rows and attributes of the finished feature files of `dataset`."""
    out = {}
    for p in sorted((folder / "out/cache/features").glob(f"{dataset}_*.h5")):
        if ".shard" not in p.name:
            with h5py.File(p) as f:
                out[p.name.split("_")[2]] = {k: f[k][:] for k in ("features", "index", "labels")} | {
                    "attrs": dict(f.attrs)
                }
    return out


def test_features_equal_those_of_the_same_images_in_an_image_folder(tmp_path):
    make_data(tmp_path)
    config(tmp_path, workers=2)
    inproc(tmp_path, "extract", "--no-progress")
    tree, shards = read(tmp_path, "tree"), read(tmp_path, "wds")
    assert set(tree) == set(shards) == {"clip", "cnn"}
    for enc in tree:
        for key in ("features", "index", "labels"):
            np.testing.assert_array_equal(tree[enc][key], shards[enc][key])
        assert json.loads(shards[enc]["attrs"]["classnames"]) == CLASSES
    np.testing.assert_array_equal(shards["cnn"]["labels"], np.repeat(np.arange(3), PER_CLASS))
    text = next((tmp_path / "out/cache/text").glob("wds-classes_*.h5"))
    with h5py.File(text) as f:
        assert [n.decode() for n in f["classnames"][:]] == CLASSES


def test_samples_are_webdatasets_own(tmp_path):
    """Random access by tar offsets gives the samples, keys and bytes webdataset's streaming reader gives."""
    from zoomshot.extract.datasets import open_split

    make_data(tmp_path, per_shard=5)
    split = open_split({"name": "wds", "kind": "webdataset", "root": str(tmp_path / "shards")}, "train")
    streamed = list(wds.WebDataset(str(tmp_path / "shards/train/{0..4}.tar"), shardshuffle=False))
    assert len(split.dataset) == len(streamed) == 3 * PER_CLASS and split.groups == [0, 5, 10, 15, 20]
    for i in (0, 4, 5, 13, 20, 7, 2):  # out of order too: each read seeks
        s = split.dataset.sample(i)
        assert (s["__key__"], s["jpg"], s["cls"]) == (streamed[i]["__key__"], streamed[i]["jpg"], streamed[i]["cls"])
    # forked DataLoader workers, after this process has a shard open: each reads through its own file
    from torch.utils.data import DataLoader

    loader = DataLoader(
        range(len(streamed)),
        batch_size=3,
        num_workers=2,
        collate_fn=lambda items: [split.dataset.sample(i)["jpg"] for i in items],
    )
    assert [b for batch in loader for b in batch] == [s["jpg"] for s in streamed]


def test_a_kill_at_a_known_batch_resumes_bit_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
        make_data(folder)
        config(folder, splits=("wds:train",))
    inproc(whole, "extract", "--no-progress")
    # batches of 4 within tar shards of 8, 8, 5: the 3rd batch ends the second tar shard
    stopped = Stopped(killed, "extract", "--no-progress", point="extract.batch", k=3)
    stopped.wait_stopped()
    assert stopped.kill(signal.SIGKILL) == -signal.SIGKILL
    partial = list((killed / "out/cache/features").glob("*.partial"))
    assert partial
    with h5py.File(partial[0]) as f:
        assert int(f.attrs["items_done"]) in (8, 12)  # the batch it stopped after, counted or not yet
    inproc(killed, "extract", "--no-progress")
    a, b = read(whole, "wds"), read(killed, "wds")
    for enc in a:
        for key in ("features", "index", "labels"):
            assert a[enc][key].tobytes() == b[enc][key].tobytes()


def test_dask_workers_get_whole_tar_shards_and_rerun_only_a_lost_one(tmp_path):
    from dask.distributed import LocalCluster

    single, sharded = tmp_path / "single", tmp_path / "sharded"
    for folder in (single, sharded):
        folder.mkdir()
        make_data(folder, per_shard=5)  # 5 tar shards: 5, 5, 5, 5, 1 samples
        config(folder, splits=("wds:train",), options='{ shards = "{split}/{0..4}.tar" }')
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        # the single-process reference on one thread too: CPU kernels may round otherwise
        inproc(single, "extract", "--no-progress", "--scheduler", cluster.scheduler_address, "--shards", "1")
        inproc(sharded, "extract", "--no-progress", "--scheduler", cluster.scheduler_address, "--shards", "2")
        parts = sorted((sharded / "out/cache/features").glob("wds_train_cnn_*.shard*"))
        assert len(parts) == 2
        ranges = []
        for p in parts:
            with h5py.File(p) as f:
                ranges.append(json.loads(f.attrs["shard_items"]))
        assert ranges in ([[0, 10], [10, 21]], [[0, 15], [15, 21]])  # cut where a tar shard starts
        a, b = read(single, "wds"), read(sharded, "wds")
        for enc in a:
            for key in ("features", "index", "labels"):
                np.testing.assert_array_equal(a[enc][key], b[enc][key])
        target = next(p for p in (sharded / "out/cache/features").glob("wds_train_cnn_*.h5") if ".shard" not in p.name)
        kept = {p: p.stat().st_mtime_ns for p in (sharded / "out/cache/features").glob("*.shard*") if p != parts[1]}
        target.unlink()
        parts[1].unlink()
        inproc(sharded, "extract", "--no-progress", "--scheduler", cluster.scheduler_address, "--shards", "2")
    assert parts[1].exists() and all(p.stat().st_mtime_ns == t for p, t in kept.items())
    np.testing.assert_array_equal(read(sharded, "wds")["cnn"]["features"], a["cnn"]["features"])


def test_the_key_follows_the_shards_content_and_the_class_names(tmp_path):
    from zoomshot.cache import layout
    from zoomshot.cli import config as C

    images = make_data(tmp_path)
    config(tmp_path)

    def keys():
        import os

        old = os.getcwd()
        os.chdir(tmp_path)
        try:
            project = C.load(None).project
            return layout.feature_path(project, "cnn", "wds:train"), layout.class_text_path(project, "wds")
        finally:
            os.chdir(old)

    first = keys()
    # re-pack shard 1 with one image replaced by another of the same byte length: same shard size
    swapped = list(images)
    data = bytearray(swapped[9][1])
    data[len(data) // 2] ^= 0xFF
    swapped[9] = (swapped[9][0], bytes(data))
    shard = tmp_path / "shards/train/1.tar"
    size = shard.stat().st_size
    with wds.TarWriter(str(shard)) as sink:
        for k in range(8, 16):
            sink.write({"__key__": f"s{k:05d}", "jpg": swapped[k][1], "cls": swapped[k][0]})
    assert shard.stat().st_size == size
    second = keys()
    assert second[0] != first[0] and second[1] == first[1]
    (tmp_path / "shards/classnames.txt").write_text("cat\nowl\nfox\n")
    assert keys()[1] != second[1]
    config(tmp_path, options='{ shards = "{split}/{0..1}.tar" }')  # fewer shards: other samples
    assert keys()[0] != second[0]


def test_draft_and_gpu_settings_are_in_the_key(tmp_path):
    from zoomshot.cache import layout
    from zoomshot.cli import config as C

    make_data(tmp_path)
    config(tmp_path)
    paths = {}
    for draft in (True, False):
        cfg = C.from_dict(
            {
                "datasets": [{"name": "wds", "kind": "webdataset", "root": str(tmp_path / "shards")}],
                "extract": {"jpeg_draft": draft},
            }
        )
        paths[draft] = layout.feature_path(cfg.project, "clip", "wds:train")
    assert paths[True] != paths[False]
    cfg.extract.gpu_preprocess = True
    assert layout.feature_path(cfg.project, "clip", "wds:train") not in paths.values()


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no split folder", "no folder"),
        ("pattern matches nothing", "shards of options.shards"),
        ("no .cls", "has no .cls member"),
        ("no image", "has no image"),
        ("no classnames.txt", "classnames.txt (one class name a line"),
        ("nshards.txt counts more", "says 4 shards, 1 missing"),
        ("compressed shard", "not a readable uncompressed tar shard"),
    ],
)
def test_bad_shards_are_one_line(tmp_path, case, expected):
    make_data(tmp_path)
    shards = tmp_path / "shards/train"
    if case == "no split folder":
        config(tmp_path, splits=("wds:test",))
    else:
        config(tmp_path, splits=("wds:train",))
    if case == "pattern matches nothing":
        config(tmp_path, splits=("wds:train",), options='{ shards = "train/{0..9}.tar" }')
    elif case == "no .cls":
        _tar(shards / "2.tar", [("a.jpg", _images()[0][1]), ("b.jpg", _images()[1][1])])
    elif case == "no image":
        _tar(shards / "2.tar", [("a.cls", b"1"), ("a.txt", b"hello")])
    elif case == "no classnames.txt":
        (tmp_path / "shards/classnames.txt").unlink()
    elif case == "nshards.txt counts more":
        (shards / "nshards.txt").write_text("4\n")
    elif case == "compressed shard":
        (shards / "2.tar").write_bytes(b"\x1f\x8b" + b"\x00" * 2000)
    code, out, err = run_main(tmp_path, "extract", "--no-progress")
    assert code == 2 and expected in err and "Traceback" not in err, (code, out, err)
    assert len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "out/cache/features").glob("*.h5"))


def test_a_corrupt_image_in_a_shard_is_skipped_or_fatal(tmp_path):
    images = _images()
    images[10] = (images[10][0], images[10][1][:200])  # a truncated JPEG inside shard 1
    make_data(tmp_path, images=images)
    config(tmp_path, splits=("wds:train",))
    code, _, err = run_main(tmp_path, "extract", "--no-progress", "--on-bad-image", "fail")
    assert code == 2 and "unreadable image 1.tar:s00010 in wds:train" in err and "Traceback" not in err
    assert not list((tmp_path / "out/cache/features").glob("*.h5"))
    proc = pipeline(tmp_path, "extract", "--no-progress")
    skipped = [ln for ln in proc.stdout.splitlines() if "skipped" in ln]
    assert (
        skipped
        == [
            ln
            for ln in skipped
            if ln.startswith("wds:train: skipped 1 unreadable image(s) for every encoder: 1.tar:s00010 (")
        ]
        and len(skipped) == 1
    )
    files = read(tmp_path, "wds")
    for f in files.values():
        assert 10 not in f["index"] and len(f["index"]) == 20 and json.loads(f["attrs"]["bad_items"]) == [10]


def test_the_documented_cluster_example_runs(tmp_path):
    """docs/scale.md "Scaling out": its LocalCluster block, run as written, with DataLoader workers inside the
    dask workers (daemon off)."""
    import os
    import re
    import subprocess
    import sys
    import textwrap

    from helpers import ENV, REPO

    doc = (REPO / "docs" / "scale.md").read_text()
    block = re.search(r"```python\n(.*?)```", doc[doc.index("## Scaling out") :], re.S).group(1)
    make_data(tmp_path, per_shard=5)
    config(tmp_path, splits=("wds:train",), workers=1)
    env = {**ENV, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{ENV.get('PATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(block)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    files = read(tmp_path, "wds")
    assert set(files) == {"clip", "cnn"}
    for f in files.values():
        assert f["index"].tolist() == list(range(21)) and len(json.loads(f["attrs"]["shards"])) == 2


# ---- shards checked like files: each wrong way one line and exit 2 from the real CLI, in a subprocess ----
def _cut(path, size):
    data = path.read_bytes()
    path.write_bytes(data[:size])


def _member(shard, name):
    """(offset of the data, size) of member `name` of a tar."""
    with tarfile.open(shard) as tf:
        info = tf.getmember(name)
        return info.offset_data, info.size


def _edit_in_place(path, offset, data):
    """Overwrite bytes of a file in place and set its times back: the same size, the same mtime."""
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("cut inside an image", "tar shard 1.tar is truncated: it ends inside s00011.jpg (100 of its "),
        ("cut between samples", "tar shard 1.tar is truncated: it ends after s00011.jpg, without the end-of-archive"),
        (
            "missing from a brace pattern",
            "1 of the 3 shards of options.shards = '{split}-{000000..000002}.tar' are missing (first: ",
        ),
        ("missing from the sequence", "shard shards/train/1.tar is missing from the sequence 0.tar .. 2.tar"),
        ("nshards.txt counts more", "nshards.txt says 4 shards, 1 missing (first: 3.tar)"),
        ("nshards.txt counts fewer", "nshards.txt says 2 shards, "),
        ("nshards.txt is no number", "nshards.txt holds 'three', not a number of shards"),
        ("label not an integer", "1.tar:s00009: its .cls is 'owl', not a class index 0..2"),
        ("negative label", "1.tar:s00009: its .cls is '-1', not a class index 0..2"),
        (
            "label beyond the classes",
            "1.tar:s00009: its .cls is '3', not a class index 0..2 (the dataset has 3 class names)",
        ),
    ],
)
def test_bad_shards_from_the_cli_are_one_line_and_exit_2(tmp_path, case, expected):
    make_data(tmp_path)  # shards 0.tar, 1.tar, 2.tar of 8, 8, 5 samples
    config(tmp_path, splits=("wds:train",))
    shards = tmp_path / "shards/train"
    if case == "cut inside an image":
        _cut(shards / "1.tar", _member(shards / "1.tar", "s00011.jpg")[0] + 100)
    elif case == "cut between samples":
        offset, size = _member(shards / "1.tar", "s00011.jpg")
        _cut(shards / "1.tar", offset + -(-size // 512) * 512)
    elif case == "missing from a brace pattern":
        for i in range(3):
            (shards / f"{i}.tar").rename(tmp_path / f"shards/train-{i:06d}.tar")
        (tmp_path / "shards/train-000001.tar").unlink()
        config(tmp_path, splits=("wds:train",), options='{ shards = "{split}-{000000..000002}.tar" }')
    elif case == "missing from the sequence":
        (shards / "1.tar").unlink()
    elif case.startswith("nshards.txt"):
        (shards / "nshards.txt").write_text(
            {"counts more": "4\n", "counts fewer": "2\n", "is no number": "three\n"}[case.removeprefix("nshards.txt ")]
        )
    else:
        label = {"label not an integer": b"owl", "negative label": b"-1", "label beyond the classes": b"3"}[case]
        with tarfile.open(shards / "1.tar") as tf:
            members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
        _tar(shards / "1.tar", [(n, label if n == "s00009.cls" else d) for n, d in members])
    proc = pipeline(tmp_path, "extract", "--no-progress", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], (proc.stdout, proc.stderr)
    assert not list((tmp_path / "out/cache/features").glob("*.h5"))


def test_a_truncated_shard_loses_nothing_already_cached(tmp_path):
    make_data(tmp_path)
    config(tmp_path, splits=("wds:train",))
    inproc(tmp_path, "extract", "--no-progress")
    cached = {p: p.read_bytes() for p in (tmp_path / "out/cache").rglob("*.h5")}
    _cut(tmp_path / "shards/train/2.tar", 3000)
    proc = pipeline(tmp_path, "extract", "--no-progress", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: tar shard 2.tar is truncated: it ends "), (
        proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (tmp_path / "out/cache").rglob("*.h5")} == cached


def test_a_label_changed_in_place_is_a_new_input(tmp_path):
    """One .cls byte rewritten inside a tar: the same size, the same headers, the same mtime."""
    make_data(tmp_path)
    config(tmp_path, splits=("wds:train",))
    inproc(tmp_path, "extract", "--no-progress")
    shard = tmp_path / "shards/train/1.tar"
    offset, size = _member(shard, "s00009.cls")
    assert shard.read_bytes()[offset : offset + size] == b"1"
    _edit_in_place(shard, offset, b"2")
    proc = pipeline(tmp_path, "extract", "--no-progress")
    assert "wds:train: the listing of its files changed since the last extraction" in proc.stdout, proc.stdout
    assert "2 cache file(s) written" in proc.stdout, proc.stdout
    newest = max((tmp_path / "out/cache/features").glob("wds_train_cnn_*.h5"), key=lambda p: p.stat().st_mtime_ns)
    with h5py.File(newest) as f:
        labels = f["labels"][:]
    assert len(labels) == 3 * PER_CLASS and labels[9] == 2 and labels[8] == 1


def test_the_fingerprint_of_shards_holds_their_labels_and_with_content_hash_their_bytes(tmp_path):
    from zoomshot.cache import keys

    make_data(tmp_path)
    folder, shard = tmp_path / "shards/train", tmp_path / "shards/train/1.tar"
    before = {c: keys.tree_fingerprint(folder, content=c) for c in (False, True)}
    offset, size = _member(shard, "s00010.jpg")
    _edit_in_place(shard, offset + size // 2, bytes([shard.read_bytes()[offset + size // 2] ^ 0xFF]))
    image = {c: keys.tree_fingerprint(folder, content=c) for c in (False, True)}
    assert image[False] == before[False] and image[True] != before[True]  # an image's bytes: content_hash only
    _edit_in_place(shard, _member(shard, "s00009.cls")[0], b"0")
    label = {c: keys.tree_fingerprint(folder, content=c) for c in (False, True)}
    assert label[False] != image[False] and label[True] != image[True]  # a label: either way
