"""The shipped default: pipeline.toml on the generated world with the trained tiny models reaches the
floors measured for it (a few points under, so a regression fails and noise does not)."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from zoomshot.extract.world import HELD_OUT_LABELS, ShapesWorld

ROOT = Path(__file__).resolve().parent.parent
FIGURE = "acc_vs_fraction_shapes_part1.png"  # the default run's figure README embeds (docs/results.md both parts)

# Measured with the shipped weights (see docs/results.md); floors a few points under.
CLIP_FLOOR = 0.87  # measured 91.0 %
CLIP_HELD_OUT_FLOOR = 0.74  # measured 80.4 % on the 10 colour-shape combinations its captions never had
CNN_LSTSQ_FLOOR = 0.76  # measured 80.4 %
CNN_TRAINED_FLOOR = 0.76  # measured 80.5 % (Zoom-shot trainer, MSE only)
TIPX_GAIN = 0.04  # CLIP + TIP-X with 16 in-distribution shots: measured 98.1 % (+7.1 points, with the
# support set of the same statistics that was called name-only before the world had styles)
#: issue 5's target: the mapped caption-free encoder reaches 75 % of CLIP's top-1 (measured 88 %)
SHARE_OF_CLIP = 0.75
FEW_ROWS_FLOOR = 0.55  # measured 63.1 % (mse) and 63.7 % (lstsq) on 100 training rows
#: Retrieval Recall@5 against the test split's captions (measured: CLIP 92.7 % text->image and 92.1 %
#: image->text, cnn lstsq 72.8 / 68.8 %, cnn-random lstsq 20.2 / 16.6 %). Recall@1 is low for every
#: model because captions repeat: 1,280 images share 384 factor combinations.
CLIP_RECALL5_FLOOR = 0.88
CNN_RECALL5_FLOOR = 0.65


@pytest.fixture(scope="module")
def default_run(default_world):
    folder = default_world
    results = [json.loads(p.read_text()) for p in (folder / "zoomshot-out/results").rglob("*.json")]
    report = (folder / "zoomshot-out/report/table.md").read_text()
    full = {(r["encoder"], r["variant"]): r["metrics"]["acc1"] for r in results if r.get("fraction") in (None, 1.0)}
    few = {(r["encoder"], r["variant"]): r["metrics"]["acc1"] for r in results if r.get("fraction") == 0.025}
    return full, results, report, few, folder / "zoomshot-out/report"


def test_tiny_clip_zero_shot_floor_and_tipx_gain(default_run):
    default_run, *_ = default_run
    assert default_run[("clip", "clip")] >= CLIP_FLOOR
    assert default_run[("clip", "clip+tip-x (16-shot, in-distribution)")] >= default_run[("clip", "clip")] + TIPX_GAIN


def test_held_out_combinations_are_scored_and_reported_on_their_own(default_run):
    acc1, results, report, *_ = default_run
    clip = next(r["metrics"] for r in results if r["variant"] == "clip")
    assert clip["acc1_held_out"] >= CLIP_HELD_OUT_FLOOR
    # the two groups partition the test set: their sample-weighted mean is the overall top-1
    labels = ShapesWorld("test", size=1280, seed=0).labels()
    n_held = int(np.isin(labels, HELD_OUT_LABELS).sum())
    assert 0 < n_held < 1280
    mix = (n_held * clip["acc1_held_out"] + (1280 - n_held) * clip["acc1_seen"]) / 1280
    assert mix == pytest.approx(acc1[("clip", "clip")])
    header = next(line for line in report.splitlines() if line.startswith("| Variant"))
    assert header.startswith("| Variant | cnn / shapes | cnn / shapes (held_out) | cnn / shapes (seen) |"), header


def test_trained_encoder_transfers_and_beats_the_random_floor(default_run):
    default_run, *_ = default_run
    assert default_run[("cnn", "lstsq")] >= CNN_LSTSQ_FLOOR
    assert default_run[("cnn", "mse")] >= CNN_TRAINED_FLOOR
    assert default_run[("cnn", "mse")] >= SHARE_OF_CLIP * default_run[("clip", "clip")]
    assert default_run[("cnn", "lstsq")] > default_run[("cnn-random", "lstsq")] + 0.40  # measured 17.1 %
    # 8 variants x 3 encoders, and the paper preset's 5 loss sets on the cnn
    plain = {k: v for k, v in default_run.items() if k[0] != "clip" and "tip" not in k[1]}
    assert len(plain) == 3 * 8 + 5 and all(v < default_run[("clip", "clip")] for v in plain.values())


def test_a_hundred_rows_still_transfer(default_run):
    """2.5 % of the training split: 100 rows for the CNN's 96 dimensions. The reconstruction's GCV ridge
    keeps the maps from fitting noise: measured mse 63.1 %, lstsq 63.7 % (unregularised: 17 %)."""
    few = default_run[3]
    assert few[("cnn", "mse")] >= FEW_ROWS_FLOOR and few[("cnn", "lstsq")] >= FEW_ROWS_FLOOR


def numbers(line):
    return [float(x) for x in re.findall(r"-?\d+\.\d+|\b\d+\b", line)]


def _readme_report():
    """scripts/readme_report.py, which makes the blocks (it is a script, not a module of the package)."""
    spec = importlib.util.spec_from_file_location("readme_report", ROOT / "scripts" / "readme_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["headline", "table", "data_efficiency"])
def test_docs_hold_the_tables_the_default_run_makes(default_run, name):
    """README's headline and docs/results.md's tables are pasted from this run's report
    (scripts/readme_report.py): labels and layout exactly, zero-shot numbers to 0.5 points (another CPU's
    BLAS may round a borderline test image the other way: 0.08 points an image). Adapter rows (↳) are
    compared by layout only: their search on 512 support rows flips between near-equal settings on float
    noise (measured: a < 1e-3 change of the features moved cnn-random + TIP-X by 9.8 points on its 160
    held-out images)."""
    script = _readme_report()
    made = script.made(name, default_run[4]).splitlines()
    page = script.PAGES[name]
    block = re.search(rf"<!-- report:{name} -->\n(.*?)<!-- /report:{name} -->", (ROOT / page).read_text(), re.S)
    assert block, f"{page} has no <!-- report:{name} --> block"
    pasted = block.group(1).splitlines()
    assert len(pasted) == len(made), f"{page}'s table is not what the default run makes: run scripts/readme_report.py"
    for old, new in zip(pasted, made):
        assert re.sub(r"[\d.*]+", "#", old) == re.sub(r"[\d.*]+", "#", new), (old, new)
        if not old.startswith("| ↳"):
            assert numbers(old) == pytest.approx(numbers(new), abs=0.5), (old, new)
    assert (ROOT / "docs" / FIGURE).is_file() and f"(docs/{FIGURE})" in (ROOT / "README.md").read_text()


def test_retrieval_is_reported_next_to_classification(default_run):
    _, results, *_ = default_run
    zero_shot = {
        (r["encoder"], r["variant"]): r["metrics"]
        for r in results
        if r.get("fraction") in (None, 1.0) and "tip" not in r["variant"]
    }
    clip, cnn, floor = zero_shot[("clip", "clip")], zero_shot[("cnn", "lstsq")], zero_shot[("cnn-random", "lstsq")]
    for direction in ("image", "text"):
        recalls = [clip[f"{direction}_retrieval_recall@{k}"] for k in (1, 5, 10)]
        assert recalls == sorted(recalls) and recalls[0] > 0.2  # chance is 1/1,280 at k = 1
        assert clip[f"{direction}_retrieval_recall@5"] >= CLIP_RECALL5_FLOOR
        assert cnn[f"{direction}_retrieval_recall@5"] >= CNN_RECALL5_FLOOR
        assert cnn[f"{direction}_retrieval_recall@5"] > floor[f"{direction}_retrieval_recall@5"] + 0.3
