"""What `pipeline evaluate` prints, through the real CLI: one table of top-1 at the end (per encoder,
variant, fraction and epochs: zero-shot and each adapter, seeds averaged), a line per adapted result
only with --verbose, no progress bar with --no-progress; and every command takes --no-progress."""

from __future__ import annotations

import json
import statistics
import tomllib

import click
import pytest
import tomli_w
from helpers import pipeline, synthetic_project


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Synthetic features (cache import), lstsq on two fractions and two seeds, Tip-Adapter 4-shot from train."""
    folder = synthetic_project(tmp_path_factory.mktemp("console"), ["lstsq"])
    data = tomllib.loads((folder / "pipeline.toml").read_text())
    data["fit"].update(fractions=[0.5, 1.0], seeds=[0, 1])
    data["evaluate"].update(adapters=["tip-adapter"], support="syn:train", shots=4)
    (folder / "pipeline.toml").write_text(tomli_w.dumps(data))
    pipeline(folder, "fit")
    return folder


def _table(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = lines.index("evaluate: top-1 (%) of what it scored, seeds averaged")
    return [line.split() for line in lines[start + 1 :]]


def test_evaluate_ends_with_one_table_and_no_bar(fitted):
    proc = pipeline(fitted, "evaluate", "--no-progress")
    head, *rows = _table(proc.stdout)
    assert head == ["encoder", "variant", "fraction", "epochs", "seeds", "zero-shot", "top-1", "tip-adapter", "top-1"]
    assert [r[:5] for r in rows] == [
        ["clip", "clip", "-", "-", "1"],
        ["src", "lstsq", "0.5", "-", "2"],
        ["src", "lstsq", "1.0", "-", "2"],
    ]
    results = [json.loads(p.read_text()) for p in (fitted / "out/results").rglob("*.json")]
    for row in rows[1:]:
        for column, adapted in ((5, False), (6, True)):
            mine = [
                r["metrics"]["acc1"]
                for r in results
                if r["encoder"] == "src" and r["fraction"] == float(row[2]) and ("base_variant" in r) == adapted
            ]
            assert len(mine) == 2 and row[column] == f"{100 * statistics.fmean(mine):.1f}", (row, mine)
    assert "seed=" not in proc.stdout  # no line per result
    assert "score syn:test" not in proc.stderr  # no progress bar


def test_verbose_lines_and_the_bar(fitted):
    proc = pipeline(fitted, "evaluate", "--verbose")
    assert sum("lstsq+tip-adapter" in line and "fraction=0.5 seed=1" in line for line in proc.stdout.splitlines()) == 1
    assert "score syn:test" in proc.stderr
    assert _table(proc.stdout)[0][0] == "encoder"


@pytest.mark.parametrize("args", [["fit"], ["report", "--no-plots"], ["cache", "ls"], ["list", "presets"]])
def test_commands_take_no_progress(fitted, args):
    pipeline(fitted, *args, "--no-progress")


def test_every_command_takes_no_progress():
    """Each command, and each command of a group, has the option (clip-benchmark hands its arguments on)."""
    from zoomshot.cli.main import cli

    def commands(group: click.Group, ctx: click.Context):
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            yield from commands(command, ctx) if isinstance(command, click.Group) else [(name, command)]

    missing = [
        name
        for name, command in commands(cli, click.Context(cli))
        if name != "clip-benchmark" and not any(p.name == "progress" for p in command.params)
    ]
    assert not missing, missing


def test_two_support_sets_are_two_columns_not_two_seeds():
    """An adapter run with two support sets (name-only and k-shot) gives a column each; averaging them
    as if they were seeds (what the table did when support sets became a list) fails here."""
    from zoomshot.evaluate.summary import summary_table

    base = {"dataset": "shapes", "split": "test", "encoder": "cnn", "fraction": 1.0, "epochs": 20}
    results = [
        {**base, "variant": "mse", "method": "zoomshot", "metrics": {"acc1": 0.8}},
        *(
            {
                **base,
                "variant": f"mse+tip-x ({label})",
                "base_variant": "mse",
                "method": "tip-x",
                "support_label": label,
                "metrics": {"acc1": acc},
            }
            for label, acc in (("name-only support", 0.5), ("16-shot, in-distribution", 0.9))
        ),
    ]
    head, row = summary_table(results).splitlines()
    assert "seeds" not in head
    assert "tip-x (name-only support) top-1" in head and "tip-x (16-shot, in-distribution) top-1" in head
    assert row.split()[-3:] == ["80.0", "50.0", "90.0"]
