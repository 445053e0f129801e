"""Real dataset formats with small local stand-ins: ImageFolder with a truncated JPEG, torchvision's
CIFAR-10 on-disk format; sharded extraction on a real two-worker dask cluster."""

import json
import pickle

import h5py
import numpy as np
from helpers import CLIP, CNN, PATHS, pipeline, write_config
from PIL import Image

ONE_ENCODER = (
    PATHS
    + CLIP
    + CNN
    + """
[[datasets]]
name = "data"
kind = "{kind}"
root = "{root}"
options = {options}

[extract]
splits = ["data:{split}"]
batch_size = 8
device = "cpu"
"""
)


def _config(folder, kind, root, split, options="{}"):
    write_config(folder, ONE_ENCODER, kind=kind, root=root, split=split, options=options, templates="openai-imagenet")


def _image_folder(root, classes=("cat_dog", "red_fox", "owl"), per_class=6, bad=(1, 2)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.jpg")
    path = root / "train" / sorted(classes)[bad[0]] / f"{bad[1]}.jpg"
    path.write_bytes(path.read_bytes()[:300])  # a truncated JPEG
    return bad[0] * per_class + bad[1]  # its dataset index (classes in sorted order)


def _read(folder):
    """Finished feature files by name (shards excluded), or by encoder when a folder has one split."""
    out = {}
    for p in sorted((folder / "out/cache/features").glob("*.h5")):
        if ".shard" not in p.name:
            with h5py.File(p) as f:
                out[p.name] = {k: f[k][:] for k in ("features", "index", "labels")} | {"attrs": dict(f.attrs)}
    if len({name.split("_")[1] for name in out}) == 1:
        out = {name.split("_")[2]: v for name, v in out.items()}
    return out


def test_bad_image_skipped_for_every_encoder(tmp_path):
    bad = _image_folder(tmp_path / "imgs")
    _config(tmp_path, "imagefolder", "imgs", "train")
    pipeline(tmp_path, "extract", "--no-progress")
    files = _read(tmp_path)
    assert set(files) == {"clip", "cnn"}
    for f in files.values():
        assert len(f["index"]) == 17 and bad not in f["index"]
        assert json.loads(f["attrs"]["bad_items"]) == [bad] and f["attrs"]["bad_count"] == 1
        assert json.loads(f["attrs"]["classnames"]) == ["cat dog", "owl", "red fox"]
    np.testing.assert_array_equal(files["clip"]["index"], files["cnn"]["index"])
    np.testing.assert_array_equal(files["cnn"]["labels"], files["cnn"]["index"] // 6)  # 6 images a class


def test_bad_image_fails_when_asked_and_writes_nothing(tmp_path):
    _image_folder(tmp_path / "imgs")
    _config(tmp_path, "imagefolder", "imgs", "train")
    proc = pipeline(tmp_path, "extract", "--no-progress", "--on-bad-image", "fail", check=False)
    assert proc.returncode == 2 and "unreadable image" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "out/cache/features").glob("*.h5"))


def test_missing_root_is_one_line(tmp_path):
    _config(tmp_path, "imagefolder", "nowhere", "train")
    proc = pipeline(tmp_path, "extract", check=False)
    assert proc.returncode == 2 and "expected an ImageFolder tree at nowhere/train" in proc.stderr
    _config(tmp_path, "cifar10", "nowhere", "test")
    proc = pipeline(tmp_path, "extract", check=False)
    assert proc.returncode == 2 and "no CIFAR10 'test' data under nowhere" in proc.stderr


def _cifar10_standin(root, n=24):
    """CIFAR-10 in torchvision's own on-disk format (pickled batches of uint8 rows)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    labels = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels[name] = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": labels[name]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return labels["test_batch"], names


def test_cifar10_in_torchvision_format(tmp_path):
    labels, names = _cifar10_standin(tmp_path / "cifar")
    _config(tmp_path, "cifar10", "cifar", "test", "{ verify = false }")
    pipeline(tmp_path, "extract", "--no-progress")
    files = _read(tmp_path)
    np.testing.assert_array_equal(files["cnn"]["labels"], labels)
    assert json.loads(files["cnn"]["attrs"]["classnames"]) == names
    assert files["clip"]["features"].shape == (24, 128)
    text = list((tmp_path / "out/cache/text").glob("data-classes_*.h5"))
    with h5py.File(text[0]) as f:  # OpenAI ImageNet templates x CIFAR class names
        assert f["embeddings"].shape[0] == 10 * 80 and f["classnames"][3].decode() == "cat"


def test_sharded_extraction_on_two_workers_equals_single_process(tmp_path):
    from dask.distributed import LocalCluster

    single, sharded = tmp_path / "single", tmp_path / "sharded"
    for folder in (single, sharded):
        folder.mkdir()
        write_config(folder, train=200, test=40, batch=32)
    # dask workers run torch on one thread; so does the reference run, since CPU kernels may round
    # differently with another thread count.
    pipeline(single, "extract", "--no-progress", env={"OMP_NUM_THREADS": "1"})
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        pipeline(sharded, "extract", "--scheduler", cluster.scheduler_address, "--shards", "3")
        a, b = _read(single), _read(sharded)
        assert a.keys() == b.keys()
        for enc in a:
            for key in ("features", "index", "labels"):
                np.testing.assert_array_equal(a[enc][key], b[enc][key])
        shard_files = sorted((sharded / "out/cache/features").glob("*shard*"))
        assert len(shard_files) == 3 * 3 + 3 * 2  # train: 3 shards, test (2 batches): 2, x 3 encoders
        with h5py.File(next(p for p in (sharded / "out/cache/features").glob("*.h5") if "shard" not in p.name)) as f:
            assert f["features"].is_virtual
        # A lost shard: only it is extracted again, and the joined file is the same.
        target = next(
            p for p in (sharded / "out/cache/features").glob("shapes_train_cnn_*.h5") if "shard" not in p.name
        )
        lost = sorted(sharded.glob(f"out/cache/features/{target.stem}.shard*"))[1]
        others = {p: p.stat().st_mtime_ns for p in shard_files if p != lost}
        target.unlink()
        lost.unlink()
        pipeline(sharded, "extract", "--scheduler", cluster.scheduler_address, "--shards", "3")
    assert lost.exists() and [p.name for p, t in others.items() if p.stat().st_mtime_ns != t] == []
    assert "ok" in pipeline(sharded, "cache", "verify", target.name).stdout
    np.testing.assert_array_equal(_read(sharded)[target.name]["features"], a[target.name]["features"])
