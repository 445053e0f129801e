"""Paper-style tables: cells are the hand-computed means and stds of the result files, CLIP first,
adapters under their variant, the best student per column marked, the share of CLIP computed, the
slice and pivot as asked; Markdown, CSV and LaTeX say the same; ambiguous pivots are refused."""

import csv
import io
import json
import math

import pytest
from helpers import run_main, shipped_config, write_toml

from zoomshot.cache.errors import PipelineError
from zoomshot.evaluate.report import load_results, summary_rows
from zoomshot.evaluate.tables import Pivot, build_tables, pivot_table, to_csv, to_latex, to_markdown


def result(
    encoder, variant, acc1, *, method="zoomshot", seed=0, fraction=1.0, epochs=20, dataset="shapes", base=None, **groups
):
    teacher = encoder == "clip"
    r = {
        "dataset": dataset,
        "split": "test",
        "encoder": encoder,
        "method": method,
        "variant": variant,
        "run": "clip" if teacher else f"{encoder}-{variant}-{fraction}-{seed}",
        "seed": None if teacher else seed,
        "fraction": None if teacher else fraction,
        "epochs": None if teacher or method == "lstsq" else epochs,
        "created": "t0",
        "metrics": {"acc1": acc1, **{f"acc1_{g}": v for g, v in groups.items()}},
    }
    if base:
        r["base_variant"] = base
    return r


RESULTS = [
    result("clip", "clip", 0.80, method="clip"),
    result("clip", "clip+tip-x", 0.88, method="tip-x", base="clip"),
    *(result("cnn", "mse", a, seed=s) for s, a in enumerate((0.60, 0.62, 0.67))),
    result("cnn", "mse", 0.40, fraction=0.1),
    result("cnn", "lstsq", 0.58, method="lstsq"),
    result("cnn", "lstsq", 0.32, method="lstsq", fraction=0.1),
    result("cnn", "mse+tip-x", 0.75, method="tip-x", base="mse"),
    result("vit", "mse", 0.51),
    result("vit", "lstsq", 0.52, method="lstsq"),
]


@pytest.fixture
def rows(tmp_path):
    """Through files on disk, as the report reads them."""
    for i, r in enumerate(RESULTS):
        (tmp_path / f"{i}.json").write_text(json.dumps(r))
    return summary_rows(load_results(tmp_path))


def body(markdown):
    return markdown.splitlines()[2:]


def test_main_table_holds_the_hand_computed_cells(rows):
    table = build_tables(rows)["table"]
    # mse on cnn: seeds 60, 62, 67 -> mean 63.0, sample std sqrt(((-3)^2 + 1 + 4^2) / 2) = sqrt(13) = 3.6
    # % of CLIP: lstsq (58/80 + 52/80) / 2 = 68.75; mse (63/80 + 51/80) / 2 = 71.25; mse+tip-x 75/80
    assert body(to_markdown(table)) == [
        "| Variant | cnn / shapes | vit / shapes | % of CLIP |",
        "| --- | ---: | ---: | ---: |",
        "| CLIP | 80.0 | 80.0 | 100 |",
        "| ↳ + tip-x | 88.0 | 88.0 | 110 |",
        "| lstsq | 58.0 | **52.0** | 69 |",
        "| mse | **63.0 ± 3.6** | 51.0 | 71 |",
        "| ↳ + tip-x | 75.0 | – | 94† |",  # a share over one of two columns is marked, and said
    ]
    assert table.caption.startswith("top-1 (%) on shapes; mean ± std over 1/3 seed(s); fraction 1.0; epochs 20;")
    assert table.caption.endswith("; †: over the columns the row fills only.")


def test_csv_holds_the_same_numbers_unrounded(rows):
    lines = list(csv.DictReader(io.StringIO(to_csv(build_tables(rows)["table"]))))
    mse = next(r for r in lines if r["variant"] == "mse" and not r["adapter"])
    assert float(mse["cnn / shapes mean"]) == pytest.approx(63.0)
    assert float(mse["cnn / shapes std"]) == pytest.approx(math.sqrt(13), abs=1e-3)
    assert float(mse["share_of_clip"]) == pytest.approx(71.25)
    assert [(r["variant"], r["adapter"]) for r in lines] == [
        ("clip", ""),
        ("clip", "tip-x"),
        ("lstsq", ""),
        ("mse", ""),
        ("mse", "tip-x"),
    ]


def test_latex_is_a_booktabs_table_with_the_best_in_bold(rows):
    tex = to_latex(build_tables(rows)["table"]).splitlines()
    assert tex[1:3] == [r"\begin{tabular}{lrrr}", r"\toprule"] and tex[-2:] == [r"\bottomrule", r"\end{tabular}"]
    assert r"mse & \textbf{63.0 $\pm$ 3.6} & 51.0 & 71 \\" in tex
    assert r"\quad + tip-x & 75.0 & -- & 94$^\dagger$ \\" in tex
    # a rule between CLIP's rows, the baselines and the loss sets
    assert tex.index(r"lstsq & 58.0 & \textbf{52.0} & 69 \\") == tex.index(r"\quad + tip-x & 88.0 & 88.0 & 110 \\") + 2


def test_data_efficiency_table_spreads_fraction_and_epochs(rows):
    table = build_tables(rows)["data_efficiency"]
    # lstsq has no epochs: its cells fill every epochs column of its fraction
    assert body(to_markdown(table)) == [
        "| Encoder | Variant | 10 % / 20 ep | 100 % / 20 ep | % of CLIP |",
        "| --- | --- | ---: | ---: | ---: |",
        "| CLIP | CLIP | 80.0 | 80.0 | 100 |",
        "| cnn | lstsq | 32.0 | 58.0 | 56 |",
        "| cnn | mse | **40.0** | **63.0 ± 3.6** | 64 |",
        "| vit | lstsq | – | 52.0 | 65† |",
        "| vit | mse | – | 51.0 | 64† |",
    ]


def test_slice_and_pivot_are_chosen(rows):
    at_tenth = pivot_table(rows, Pivot.parse("variant:encoder"), ["acc1"], {"fraction": 0.1})
    assert body(to_markdown(at_tenth))[2:] == [
        "| CLIP | 80.0 | 100 |",
        "| ↳ + tip-x | 88.0 | 110 |",
        "| lstsq | 32.0 | 40 |",
        "| mse | **40.0** | 50 |",
    ]
    flipped = pivot_table(rows, Pivot.parse("encoder:variant"), ["acc1"], adapters=False)
    # CLIP's cells fill every encoder row; a share of CLIP only means something where variants are rows
    assert body(to_markdown(flipped)) == [
        "| Encoder | CLIP | lstsq | mse |",
        "| --- | ---: | ---: | ---: |",
        "| cnn | 80.0 | **58.0** | **63.0 ± 3.6** |",
        "| vit | 80.0 | 52.0 | 51.0 |",
    ]


def test_class_groups_become_sub_columns():
    clip = result("clip", "clip", 0.80, method="clip", held_out=0.50)
    mse = result("cnn", "mse", 0.60, held_out=0.404)
    table = build_tables(summary_rows([clip, mse]))["table"]
    assert body(to_markdown(table))[0] == "| Variant | cnn / shapes | cnn / shapes (held_out) | % of CLIP |"
    assert body(to_markdown(table))[3] == "| mse | **60.0** | **40.4** | 78 |"  # (60/80 + 40.4/50) / 2


def test_gap_table_is_not_in_percent_and_marks_nothing():
    clip, mse = result("clip", "clip", 0.8, method="clip"), result("cnn", "mse", 0.6)
    clip["metrics"].update(gap=0.2245, text_cos=0.7)
    mse["metrics"].update(gap=0.31, text_cos=0.65)
    table = build_tables(summary_rows([clip, mse]))["modality_gap"]
    assert body(to_markdown(table)) == [
        "| Variant | cnn / gap | cnn / text_cos |",
        "| --- | ---: | ---: |",
        "| CLIP | 0.225 | 0.700 |",
        "| mse | 0.310 | 0.650 |",
    ]


def test_a_cell_two_results_would_share_is_refused_naming_the_field(rows):
    other = summary_rows(RESULTS + [result("vit", "mse", 0.3, dataset="cifar")])
    with pytest.raises(PipelineError, match=r"differ in dataset \(cifar and shapes\); put dataset into the pivot"):
        pivot_table(other, Pivot.parse("variant:encoder"), ["acc1"])
    with pytest.raises(PipelineError, match="no result has fraction 0.3; there are: 0.1, 1.0"):
        pivot_table(rows, Pivot.parse("variant:encoder"), ["acc1"], {"fraction": 0.3})


@pytest.mark.parametrize("text", ["variant", "variant:", "variant:colour", "variant:variant", ":encoder"])
def test_bad_pivots_are_refused(text):
    with pytest.raises(ValueError, match="must be ROWS:COLUMNS"):
        Pivot.parse(text)


def test_report_command_refuses_bad_table_options_in_one_line(tmp_path):
    write_toml(tmp_path, shipped_config())
    results = tmp_path / "zoomshot-out/results"
    results.mkdir(parents=True)
    for i, r in enumerate(RESULTS):
        (results / f"{i}.json").write_text(json.dumps(r))
    code, out, err = run_main(tmp_path, "report", "--no-plots", "--pivot", "variant:colour", "--all-runs")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "report.pivot" in err, err
    code, out, err = run_main(tmp_path, "report", "--no-plots", "--fraction", "0.3", "--all-runs")
    assert code == 2 and err.strip() == "error: no result has fraction 0.3; there are: 0.1, 1.0", err
    code, out, _ = run_main(tmp_path, "report", "--no-plots", "--pivot", "encoder:variant", "--all-runs")
    # these results name no run of the config's grid: with --all-runs each is a row labelled as an old run
    assert code == 0 and "| Encoder | CLIP | CLIP + tip-x | lstsq [old run cnn-lstsq-1.0-0] |" in out, out
    written = sorted(p.name for p in (tmp_path / "zoomshot-out/report").iterdir())
    assert written == sorted(
        [
            "results.csv",
            "results.json",
            "report_files.json",
            "data_efficiency.md",
            "data_efficiency.csv",
            "data_efficiency.tex",
            "table.md",
            "table.csv",
            "table.tex",
        ]
    )


def test_cells_that_read_the_same_are_both_best():
    rows = summary_rows(
        [
            result("clip", "clip", 0.8, method="clip"),
            result("cnn", "mse", 0.6304),
            result("cnn", "lstsq", 0.6296, method="lstsq"),
            result("cnn", "mse+cyc", 0.61),
        ]
    )
    assert body(to_markdown(build_tables(rows)["table"]))[3:] == [
        "| lstsq | **63.0** | 79 |",
        "| mse | **63.0** | 79 |",
        "| mse+cyc | 61.0 | 76 |",
    ]
