"""Report: result files written by separate processes merge into one summary (CSV / JSON): mean and std
over seeds per setting, the newest result per seed, unreadable files skipped with a warning."""

import csv
import json
import math
import subprocess
import sys

import pytest

from zoomshot.cache.errors import PipelineError
from zoomshot.evaluate.report import load_results, replace_outputs, summary_rows, write_summary

WRITER = """
import json, pathlib, sys
for path, result in json.loads(sys.argv[1]):
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result))
"""


def result(encoder, variant, dataset, acc1, seed=0, fraction=0.5, epochs=20, method="zoomshot", created="t0"):
    clip = method == "clip"
    return {
        "dataset": dataset,
        "model": "ViT-B-32" if clip else encoder,
        "pretrained": "",
        "task": "zeroshot_classification",
        "metrics": {
            "acc1": acc1,
            "acc5": min(1.0, acc1 + 0.3),
            "mean_per_class_recall": acc1 - 0.01,
            "teacher_agreement": None if clip else acc1 + 0.1,
            "clip_acc1": 0.85,
        },
        "run": f"{encoder}-{variant}-{seed}",
        "encoder": encoder,
        "method": method,
        "variant": variant,
        "fraction": None if clip else fraction,
        "epochs": None if clip else epochs,
        "seed": seed,
        "created": created,
    }


def write_in_subprocess(files):
    """Write [(path, result)] from a fresh Python process, as separate evaluation runs do."""
    payload = json.dumps([(str(path), res) for path, res in files])
    subprocess.run([sys.executable, "-c", WRITER, payload], check=True)


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    runs = [
        [
            (root / "clip/shapes.json", result("clip", "clip", "shapes", 0.85, method="clip")),
            (root / "clip/cifar.json", result("clip", "clip", "cifar", 0.90, method="clip")),
        ],
        # The teacher scored again by another run: still one CLIP row per dataset.
        [
            (root / "r1/shapes.json", result("resnet", "mse+cyc", "shapes", 0.60, seed=0)),
            (root / "r1/cifar.json", result("resnet", "mse+cyc", "cifar", 0.70, seed=0)),
            (root / "r1/clip-shapes.json", result("clip", "clip", "shapes", 0.85, seed=0, method="clip")),
        ],
        [(root / "r2/shapes.json", result("resnet", "mse+cyc", "shapes", 0.62, seed=1))],
        [(root / "r3/shapes.json", result("resnet", "linear-aligner", "shapes", 0.50, method="linear-aligner"))],
        [(root / "r4/deep/shapes.json", result("vit", "mse", "shapes", 0.55))],
    ]
    for files in runs:
        write_in_subprocess(files)
    (root / "broken.json").write_text('{"dataset": "shapes", ')
    (root / "other.json").write_text("[1, 2]")
    return root


def load_quietly(root, **filters):
    with pytest.warns(UserWarning) as caught:
        results = load_results(root, **filters)
    return results, [str(w.message) for w in caught]


def test_load_skips_corrupt_and_foreign_json(results_dir):
    results, messages = load_quietly(results_dir)
    assert len(results) == 8
    assert any("broken.json" in m for m in messages) and any("other.json" in m for m in messages)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_results(results_dir / "missing")


def test_filters(results_dir):
    by_encoder, _ = load_quietly(results_dir, encoders=["vit"])
    assert {r["encoder"] for r in by_encoder} == {"vit", "clip"}  # the ceiling always stays
    by_dataset, _ = load_quietly(results_dir, datasets=["cifar"])
    assert {(r["encoder"], r["dataset"]) for r in by_dataset} == {("clip", "cifar"), ("resnet", "cifar")}
    by_variant, _ = load_quietly(results_dir, methods=["mse"])
    assert {r["variant"] for r in by_variant} == {"mse", "clip"}
    by_method, _ = load_quietly(results_dir, methods=["zoomshot"])
    assert {r["variant"] for r in by_method} == {"mse", "mse+cyc", "clip"}


def test_summary_rows_aggregate_seeds(results_dir):
    results, _ = load_quietly(results_dir)
    rows = summary_rows(results)
    keys = [(r["encoder"], r["variant"], r["dataset"]) for r in rows]
    assert keys == [
        ("clip", "clip", "cifar"),
        ("clip", "clip", "shapes"),
        ("resnet", "linear-aligner", "shapes"),
        ("resnet", "mse+cyc", "cifar"),
        ("resnet", "mse+cyc", "shapes"),
        ("vit", "mse", "shapes"),
    ]
    two_seeds = rows[4]
    assert two_seeds["n_seeds"] == 2
    assert two_seeds["acc1_mean"] == pytest.approx(0.61)
    assert two_seeds["acc1_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert two_seeds["teacher_agreement_mean"] == pytest.approx(0.71)
    assert rows[1]["n_seeds"] == 1 and rows[1]["acc1_mean"] == pytest.approx(0.85)
    assert math.isnan(rows[1]["teacher_agreement_mean"]) and math.isnan(rows[3]["acc1_std"])


def test_write_summary(results_dir, tmp_path):
    results, _ = load_quietly(results_dir)
    paths = write_summary(summary_rows(results), tmp_path / "report")
    assert [p.name for p in paths] == ["results.csv", "results.json"]

    with paths[0].open(newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == 6
    assert csv_rows[0]["encoder"] == "clip" and csv_rows[0]["teacher_agreement_mean"] == ""
    assert csv_rows[0]["teacher"] == "True" and csv_rows[4]["teacher"] == "False"
    assert float(csv_rows[4]["acc1_mean"]) == pytest.approx(0.61) and csv_rows[4]["n_seeds"] == "2"

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    assert len(json.loads(paths[1].read_text(), parse_constant=no_nan)) == 6


def test_class_groups_get_csv_fields(tmp_path):
    clip = result("clip", "clip", "shapes", 0.85, method="clip")
    clip["metrics"].update(acc1_held_out=0.70, acc1_seen=0.88)
    header = write_summary(summary_rows([clip]), tmp_path)[0].read_text().splitlines()[0].split(",")
    assert header[-4:] == ["acc1_held_out_mean", "acc1_held_out_std", "acc1_seen_mean", "acc1_seen_std"]


def test_an_adapter_row_names_the_variant_it_adapts():
    adapted = result("resnet", "mse+tip-x", "shapes", 0.7, method="tip-x")
    adapted["base_variant"] = "mse"
    rows = summary_rows([adapted, result("resnet", "mse", "shapes", 0.6)])
    assert [(r["variant"], r["base_variant"], r["adapter"]) for r in rows] == [
        ("mse", "mse", None),
        ("mse+tip-x", "mse", "tip-x"),
    ]


def test_a_new_report_removes_only_the_files_the_previous_one_wrote(tmp_path):
    for name in ("a.png", "b.png", "notes.md"):
        (tmp_path / name).write_text(name)
    assert replace_outputs(tmp_path, [tmp_path / "a.png", tmp_path / "b.png"]) == []
    assert replace_outputs(tmp_path, [tmp_path / "a.png"]) == ["b.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "notes.md", "report_files.json"]


def test_two_runs_in_one_cell_are_refused_naming_both():
    old = {**result("resnet", "mse", "shapes", 0.40, created="2024-01-01"), "run": "aaaa"}
    new = {**result("resnet", "mse", "shapes", 0.60, created="2024-01-01"), "run": "bbbb"}
    with pytest.raises(PipelineError, match=r"two results fill one cell .*seed 0.*run aaaa.*run bbbb"):
        summary_rows([new, old])
