"""A cache that travels: the data fingerprint is taken at extraction and recorded in the cache, so a
copy of the output folder serves fit, evaluate, report and export where the images are not, with the
same numbers; where they are, later commands do not walk the image tree, and a changed tree is still
noticed. Also an ImageFolder with both splits under one root."""

import json
import os
import shutil
import time

import h5py
import pytest
from helpers import CLIP, CNN, PATHS, inproc, pipeline

CONFIG = (
    PATHS
    + CLIP
    + CNN
    + """
[[datasets]]
name = "mine"
kind = "imagefolder"
root = "images"

[extract]
splits = ["mine:train", "mine:test"]
batch_size = 8
device = "cpu"

[fit]
train = ["mine:train"]
variants = ["lstsq"]
fractions = [1.0]
epochs = [1]
workers = 1

[evaluate]
test = ["mine:test"]
"""
)
CLASSES = ["circle", "square", "triangle"]


def _images(root, per_class=(6, 4)):
    """`<root>/train/<class>/*.png` and `<root>/test/<class>/*.png` (both splits under one root), with
    every mtime an hour old: a tree that is not being written."""
    from zoomshot.extract.world import ShapesWorld

    world, i = ShapesWorld("train", size=64, seed=0), 0
    for split, n in zip(("train", "test"), per_class):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                world.image(i).save(root / split / name / f"{k}.png")
                i += 1
    old = time.time() - 3600
    for d, _, files in os.walk(root):
        for p in [d, *(os.path.join(d, f) for f in files)]:
            os.utime(p, (old, old))


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """The GPU box: the images, an extraction and a fit."""
    folder = tmp_path_factory.mktemp("box")
    _images(folder / "images")
    (folder / "pipeline.toml").write_text(CONFIG.format(templates="shapes"))
    pipeline(folder, "extract", "--no-progress")
    pipeline(folder, "fit")
    return folder


def _metrics(folder):
    return {
        p.relative_to(folder / "out/results").as_posix(): json.loads(p.read_text())["metrics"]
        for p in sorted((folder / "out/results").rglob("*.json"))
    }


def test_class_names_of_a_tree_with_both_splits(box):
    (text,) = (box / "out/cache/text").glob("mine-classes_*.h5")
    with h5py.File(text) as f:
        assert [s.decode() for s in f["classnames"][:]] == CLASSES
    for split, n in (("train", 18), ("test", 12)):
        (path,) = (box / "out/cache/features").glob(f"mine_{split}_cnn_*.h5")
        with h5py.File(path) as f:
            assert f["features"].shape[0] == n and json.loads(f.attrs["classnames"]) == CLASSES


def test_folder_names_of_two_splits_sort_by_name(tmp_path):
    from zoomshot.cache.keys import folder_names

    for split in ("train", "test"):
        for c in ("b", "a"):
            (tmp_path / split / c).mkdir(parents=True)
    assert folder_names(str(tmp_path)) == ["test", "train", "test/a", "test/b", "train/a", "train/b"]


def test_a_copied_output_folder_works_without_the_images(box, tmp_path):
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    shutil.copytree(box / "out", laptop / "out")  # cache and runs; no images here
    shutil.copy(box / "pipeline.toml", laptop)
    assert not (laptop / "images").exists()
    for folder in (box, laptop):
        fit = pipeline(folder, "fit")
        assert "1 already finished" in fit.stdout, fit.stdout  # found its inputs and the copied run
        pipeline(folder, "evaluate")
        pipeline(folder, "report")
    there, here = _metrics(box), _metrics(laptop)
    assert there and there == here  # identical numbers
    assert (box / "out/report/table.md").read_text() == (laptop / "out/report/table.md").read_text()
    (run,) = [p.name for p in (laptop / "out/runs").iterdir() if not p.name.startswith(".")]
    inproc(laptop, "export", run, "--out", "exports/cnn")
    assert (laptop / "exports/cnn").is_dir()
    assert "everything was cached already" in inproc(laptop, "extract", "--no-progress").stdout

    # the images arrive later, copied without their times: measured again once, recorded again
    shutil.copytree(box / "images", laptop / "images")
    for d, _, _ in os.walk(laptop / "images"):
        os.utime(d)
    record = laptop / "out/cache/data/mine.json"
    before = json.loads(record.read_text())["splits"]["train"]["taken_ns"]
    assert "1 already finished" in inproc(laptop, "fit").stdout
    assert json.loads(record.read_text())["splits"]["train"]["taken_ns"] > before


def test_fit_and_evaluate_do_not_walk_the_image_tree(box, monkeypatch):
    images = str(box / "images")

    def guarded(listing):
        def call(path=".", *args, **kwargs):
            if os.path.abspath(os.fspath(path)).startswith(images):
                raise AssertionError(f"{listing.__name__}({path}) lists the image tree")
            return listing(path, *args, **kwargs)

        return call

    for name in ("walk", "scandir", "listdir"):
        monkeypatch.setattr(os, name, guarded(getattr(os, name)))
    assert "1 already finished" in inproc(box, "fit").stdout
    inproc(box, "evaluate")


@pytest.mark.parametrize("change", ["add", "remove", "rename"])
def test_a_changed_tree_is_noticed(box, tmp_path, change):
    folder = tmp_path / "changed"
    shutil.copytree(box / "out", folder / "out")
    shutil.copytree(box / "images", folder / "images")
    shutil.copy(box / "pipeline.toml", folder)
    assert "1 already finished" in inproc(folder, "fit").stdout  # as extracted: found
    image = folder / "images/train/circle/0.png"
    {
        "add": lambda: shutil.copy(image, image.with_name("new.png")),
        "remove": image.unlink,
        "rename": lambda: image.rename(image.with_name("renamed.png")),
    }[change]()
    fit = inproc(folder, "fit", check=False)
    assert fit.returncode == 2 and "run `pipeline extract` first" in fit.stderr, fit.stderr
