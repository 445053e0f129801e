"""`pipeline predict` on new images rendered from the world, through the default world's exports."""

import csv
import json

import pytest
from helpers import run_main

from zoomshot.extract.world import CLASSNAMES, ShapesWorld


@pytest.fixture(scope="module")
def images(default_exports, tmp_path_factory):
    """12 new images (a split the maps never saw), their classes, and one file that is not an image."""
    folder = tmp_path_factory.mktemp("predict")
    world = ShapesWorld("val", size=12, seed=7)
    (folder / "images").mkdir()
    for i in range(12):
        world.image(i).save(folder / "images" / f"{i:02d}.png")
    (folder / "images/broken.png").write_text("not an image")
    (folder / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    exports = default_exports[0] / "exports"
    return folder, [CLASSNAMES[c] for c in world.labels()], exports


@pytest.mark.parametrize("model", ["clip", "cnn"])
def test_predict_classifies_new_images_and_skips_an_unreadable_one(images, model):
    folder, truth, exports = images
    code, out, err = run_main(
        folder,
        "predict",
        "--model",
        str(exports / model),
        "--classnames-file",
        "classnames.txt",
        "images",
        "--top-k",
        "3",
        "--out",
        "preds.csv",
        "--no-progress",
    )
    assert code == 1, err  # it skipped an image, and says so
    assert out.count("skip: unreadable image images/broken.png") == 1
    with open(folder / "preds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [f"images/{i:02d}.png" for i in range(12)]
    probs = [[float(r[f"prob_{k}"]) for k in (1, 2, 3)] for r in rows]
    assert all(p == sorted(p, reverse=True) and 0 < sum(p) <= 1 + 1e-6 for p in probs)
    hits = sum(r["class_1"] == t for r, t in zip(rows, truth))
    assert hits >= 8, (model, hits)  # CLIP 91 %, the mapped cnn 80 % on the test split


def test_predict_writes_json_lines_for_named_classes(images):
    folder, truth, exports = images
    names = sorted(set(truth))[:4]
    code, out, _ = run_main(
        folder,
        "predict",
        "--model",
        str(exports / "cnn"),
        "--classes",
        ",".join(names),
        "images/00.png",
        "images/01.png",
        "--out",
        "preds.jsonl",
        "--templates",
        "openai-imagenet",
        "--no-progress",
    )
    assert code == 0
    rows = [json.loads(line) for line in (folder / "preds.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == ["images/00.png", "images/01.png"]
    assert all(
        len(r["top"]) == 4 and {t["class"] for t in r["top"]} == set(names) for r in rows
    )  # default k <= classes
    assert sum(t["prob"] for t in rows[0]["top"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "red circle,blue star", "--top-k", "0", "images"], "--top-k must be between 1 and the number"),
        (["--classes", "red circle,blue star", "--top-k", "3", "images"], "--top-k must be between 1 and the number"),
        (["--classes", " , ", "images"], "no class names given"),
        (["images"], "give the class names with --classes"),
        (["--classes", "red circle,red circle", "images"], "class names repeat"),
        (["--classes", "red circle", "no/such/folder"], "no image file or folder at no/such/folder"),
        (["--classes", "red circle", "images", "--out", "preds.txt"], "must end in .csv or .jsonl"),
        (["--classes", "red circle", "images", "--out", "classnames.txt/preds.csv"], "cannot write --out"),
        (["--classes", "red circle", "images", "--on-bad-image", "fail"], "unreadable image images/broken.png"),
        (["--classes", "red circle", "images", "--templates", "nope.txt"], "neither 'export', 'openai-imagenet'"),
    ],
)
def test_bad_input_is_one_line(images, args, message):
    folder, _, exports = images
    before = sorted(p.name for p in folder.iterdir())
    code, _, err = run_main(folder, "predict", "--model", str(exports / "clip"), "--no-progress", *args)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_a_missing_export_is_one_line(images):
    folder, *_ = images
    code, _, err = run_main(folder, "predict", "--model", "nowhere", "--classes", "a,b", "images")
    assert code == 2 and "no export folder at nowhere" in err
