"""Presets, method revisions and failed fits (issue 23): what a run is named by and what it leaves behind."""

import json

import numpy as np
import pytest
from helpers import run_main, synthetic_project

from zoomshot.fit import methods
from zoomshot.fit.presets import PRESETS
from zoomshot.fit.trainer import TrainConfig


def _ok(result):
    code, out, err = result
    assert code == 0, (out, err)
    return out


def _variant(dry_run_line):
    """The variant of a `pipeline fit --dry-run` line (NAME ENCODER VARIANT train=...)."""
    return " ".join(dry_run_line.split("train=")[0].split()[2:])


def _records(folder):
    return [json.loads(p.read_text()) for p in (folder / "out/runs").glob("*/run.json")]


def test_a_preset_is_a_set_of_trainer_values_under_the_given_ones():
    paper = TrainConfig(**methods.resolve_params("zoomshot", {"preset": "paper", "w_kd": 0.0}))
    assert (paper.init, paper.whiten, paper.scale_terms, paper.ridge_by_gcv) == ("random", False, False, False)
    assert paper.w_kd == 0.0 and paper.w_cyc == 1.0 and paper.preset == "paper"
    assert TrainConfig(**methods.resolve_params("zoomshot", {"preset": "tuned"})) == TrainConfig()
    assert methods.resolve_params("zoomshot", {"preset": "paper"})["lr"] == PRESETS["paper"]["lr"]


def test_presets_name_the_variant_and_the_run(tmp_path):
    synthetic_project(tmp_path, ["mse", "lstsq"], fit_table='presets = ["tuned", "paper"]')
    lines = _ok(run_main(tmp_path, "fit", "--dry-run")).splitlines()
    assert sorted(map(_variant, lines)) == ["lstsq", "mse", "mse (paper)"]  # a baseline has no preset
    assert len({line.split()[0] for line in lines}) == 3  # three run names
    assert "paper  init='random'" in _ok(run_main(tmp_path, "list", "presets"))
    _ok(run_main(tmp_path, "fit", "--presets", "paper", "--variants", "mse"))
    (record,) = _records(tmp_path)
    assert (record["variant"], record["preset"], record["params"]["whiten"]) == ("mse (paper)", "paper", False)


@pytest.mark.parametrize(
    "fit_table, message",
    [
        ('presets = ["papr"]', "config key 'fit.presets': unknown preset 'papr'; valid: tuned, paper"),
        ('preset_encoders = { paper = ["nope"] }', "unknown encoder 'nope'"),
        ('trainer = { preset = "paper" }', "config key 'fit.trainer.preset'"),
    ],
)
def test_a_bad_preset_is_one_line(tmp_path, fit_table, message):
    synthetic_project(tmp_path, ["mse"], fit_table=fit_table)
    code, out, err = run_main(tmp_path, "fit", "--dry-run")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_preset_encoders_limit_where_a_preset_runs(tmp_path):
    synthetic_project(tmp_path, ["mse"], fit_table='presets = ["tuned", "paper"]\npreset_encoders = { paper = [] }')
    lines = _ok(run_main(tmp_path, "fit", "--dry-run")).splitlines()
    assert list(map(_variant, lines)) == ["mse"]


def test_a_run_of_an_older_method_revision_is_fitted_again(tmp_path, monkeypatch):
    synthetic_project(tmp_path, ["mse", "lstsq"])
    _ok(run_main(tmp_path, "fit"))
    before = {r["name"]: r for r in _records(tmp_path)}
    assert {r["revision"] for r in before.values()} == {1}
    monkeypatch.setitem(methods.METHODS, "zoomshot", methods.METHODS["zoomshot"]._replace(revision=2))
    code, out, err = run_main(tmp_path, "fit")
    assert code == 0 and "1 done, 1 already finished" in out, (out, err)
    assert "it was fitted by revision 1 of method zoomshot, which is now at revision 2" in err
    after = {r["name"]: r for r in _records(tmp_path)}
    assert set(after) == set(before)  # re-fitted in place: no stale folder left beside it
    assert {r["method"]: r["revision"] for r in after.values()} == {"zoomshot": 2, "lstsq": 1}


def _constant_source(folder):
    """Source features with no variance: the trainer cannot scale them (a ValueError inside the fit)."""
    np.save(folder / "src_train.npy", np.ones_like(np.load(folder / "src_train.npy")))


def test_a_failed_fit_keeps_its_traceback_and_says_where_in_one_line(tmp_path):
    synthetic_project(tmp_path, ["mse"], before_import=_constant_source)
    code, out, err = run_main(tmp_path, "fit")
    assert code == 1 and "0 done, 0 already finished, 1 failed" in out, (out, err)
    (line,) = [line for line in out.splitlines() if " failed " in line and "[1/1]" in line]
    assert "ValueError: features have variance 0.0" in line and "traceback: " in line
    path = tmp_path / line.split("traceback: ")[1].rstrip(")")
    text = path.read_text()
    assert path.name.endswith(".failed.txt") and path.parent.name == "runs"
    assert text.startswith("Traceback") and "variance_scale" in text and "ValueError" in text
    with pytest.raises(ValueError, match="variance 0.0"):
        run_main(tmp_path, "fit", "--debug")


def test_a_successful_fit_removes_the_failure_file(tmp_path):
    synthetic_project(tmp_path, ["mse"])
    (name,) = [line.split()[0] for line in _ok(run_main(tmp_path, "fit", "--dry-run")).splitlines()]
    (tmp_path / "out/runs").mkdir(parents=True)
    stale = tmp_path / "out/runs" / f"{name}.failed.txt"
    stale.write_text("Traceback: an earlier failure")
    _ok(run_main(tmp_path, "fit"))
    assert not stale.exists()
