"""One run, one cell: `evaluate` and `report` work on the config's grid, `pipeline runs` lists and prunes
runs, result stamps are unique and ordered, and the Python entry (`zoomshot.read_results`, `run_stage`).

Every folder fits from one cache that holds half the train split, so a run on the whole split fails
for real (its `<run>.failed.txt` is the fit's own traceback)."""

import json
import re
import subprocess
import sys

import pytest
from helpers import CLIP, CNN, ENV, SHAPES, inproc, pipeline, run_main
from PIL import Image

import zoomshot
from zoomshot.cache import timestamps
from zoomshot.cache.errors import PipelineError
from zoomshot.cli.config import load

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


def write(folder, cache, fit: str = "", evaluate: str = "") -> None:
    """A config over the shared cache `cache`, with this folder's own runs, results and report."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = (
        f'[paths]\ncache_dir = "{cache}"\nruns_dir = "out/runs"\nresults_dir = "out/results"\n'
        'report_dir = "out/report"\n'
    )
    world = (
        CLIP
        + 'pretrained = "assets:weights/tiny_clip.safetensors"\n'
        + CNN
        + 'pretrained = "assets:weights/tiny_cnn.safetensors"\n'
        + SHAPES
    ).format(train=256, test=128, batch=64, templates="shapes")
    (folder / "pipeline.toml").write_text(
        paths
        + world
        + "fraction = 0.5\n\n[fit]\nworkers = 1\n"
        + fit
        + '\n[evaluate]\ntest = ["shapes:test"]\n'
        + evaluate
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The tiny world's cnn and CLIP features (half the train split), extracted once for every test here."""
    folder = tmp_path_factory.mktemp("world")
    write(folder, folder / "cache")
    pipeline(folder, "extract", "--no-progress")
    return folder / "cache"


def dry_run(folder, *args: str) -> list[str]:
    """The run names `pipeline fit --dry-run` prints for the folder's config."""
    return [line.split()[0] for line in inproc(folder, "fit", "--dry-run", *args).stdout.splitlines()]


def shown_acc1(folder, *args: str) -> dict[str, float]:
    """`pipeline report`: the cnn rows' top-1 by variant label."""
    inproc(folder, "report", "--no-plots", *args)
    rows = json.loads((folder / "out/report/results.json").read_text())
    return {r["variant"]: r["acc1_mean"] for r in rows if r["encoder"] == "cnn"}


def result(folder, run: str) -> dict:
    return json.loads((folder / "out/results" / run / "shapes-test.json").read_text())


def test_a_changed_setting_shows_the_new_run_never_the_old(tmp_path, cache):
    """The issue's reproduction: fit, evaluate, report; change `[fit] trainer = { lr }`; again; and back.
    Before, every evaluate scored both runs under one time stamp and the cell went to the run whose hash
    sorts last: one of the two changes showed the old run's number."""
    seen = {}
    for lr in ("0.0", "0.05", "0.0"):
        write(
            tmp_path,
            cache,
            f'variants = ["mse"]\nfractions = [0.5]\nepochs = [3]\ntrainer = {{ lr = {lr} }}\n',
            "adapters = []\n",
        )
        [run] = dry_run(tmp_path)
        inproc(tmp_path, "fit")
        inproc(tmp_path, "evaluate", "--no-progress")
        seen[lr] = run, result(tmp_path, run)["metrics"]["acc1"]
        assert shown_acc1(tmp_path) == {"mse": pytest.approx(seen[lr][1])}
    assert seen["0.0"][1] != seen["0.05"][1]  # else the table could not tell the runs apart
    old = seen["0.05"][0]
    assert shown_acc1(tmp_path, "--all-runs") == {
        "mse": pytest.approx(seen["0.0"][1]),
        f"mse [old run {old}]": pytest.approx(seen["0.05"][1]),
    }


def test_stamps_are_unique_ordered_iso_utc(tmp_path, cache):
    write(tmp_path, cache, 'variants = ["lstsq", "procrustes"]\nfractions = [0.5]\nseeds = [0, 1]\n')
    inproc(tmp_path, "fit")
    inproc(tmp_path, "evaluate", "--no-progress")
    made = [json.loads(p.read_text())["created"] for p in (tmp_path / "out/results").rglob("*.json")]
    fitted = [json.loads(p.read_text())["created"] for p in (tmp_path / "out/runs").glob("*/run.json")]
    assert len(made) == 5 and len(set(made)) == 5  # 4 runs and CLIP, well within one second
    assert all(STAMP.fullmatch(s) for s in made + fitted), made + fitted
    stamps = [timestamps.now() for _ in range(1000)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_two_runs_of_the_grid_in_one_cell_are_refused_naming_both(tmp_path, cache):
    """Two training sets of one variant: the table has no column for them, so the report refuses."""
    write(
        tmp_path,
        cache,
        'variants = ["lstsq"]\nfractions = [0.5]\ntrain = ["shapes:train", "shapes:train+shapes:train"]\n',
        "adapters = []\n",
    )
    names = sorted(dry_run(tmp_path))
    inproc(tmp_path, "fit")
    inproc(tmp_path, "evaluate", "--no-progress")
    code, _, err = run_main(tmp_path, "report", "--no-plots")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "two results fill one cell" in err and f"run {names[0]}" in err and f"run {names[1]}" in err


@pytest.fixture(scope="module")
def listed(tmp_path_factory, cache):
    """One runs folder with every status: lstsq on half the rows finished and evaluated, on all of them
    failed (the cache holds half), mse's half run stale (its maps damaged after it was evaluated), mse's
    full one unfitted, and an older lstsq run (seed 7) that the config no longer names."""
    folder = tmp_path_factory.mktemp("listed")
    write(folder, cache, 'variants = ["lstsq"]\nfractions = [0.5]\nseeds = [7]\n')
    inproc(folder, "fit")
    inproc(folder, "evaluate", "--no-progress")
    [old] = dry_run(folder)
    write(folder, cache, 'variants = ["lstsq", "mse"]\nfractions = [0.5, 1.0]\nepochs = [2]\n')
    grid = dict(zip(("lstsq-0.5", "lstsq-1.0", "mse-0.5", "mse-1.0"), dry_run(folder)))
    assert run_main(folder, "fit", "--variants", "lstsq")[0] == 1  # its 1.0 run fails
    inproc(folder, "fit", "--variants", "mse", "--fractions", "0.5")
    old_stamp = result(folder, old)["created"]
    evaluated = run_main(folder, "evaluate", "--no-progress")
    assert result(folder, old)["created"] == old_stamp  # the old run is not scored again
    maps = folder / "out/runs" / grid["mse-0.5"] / "maps.safetensors"
    data = bytearray(maps.read_bytes())
    data[-1] ^= 0xFF
    maps.write_bytes(bytes(data))
    return folder, old, grid, evaluated


def test_evaluate_scores_the_grid_and_says_which_are_not_fitted(listed):
    folder, old, grid, (code, out, _) = listed
    assert code == 1 and "2 run(s) of the config's grid not fitted" in out
    assert grid["lstsq-1.0"] in out and grid["mse-1.0"] in out
    assert sorted(p.name for p in (folder / "out/results").iterdir()) == sorted(
        ["clip", old, grid["lstsq-0.5"], grid["mse-0.5"]]
    )


def test_pipeline_runs_lists_settings_status_and_top1(listed):
    folder, old, grid, _ = listed
    code, out, _ = run_main(folder, "runs", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert list(rows) == [*grid.values(), old]
    assert {name: r["status"] for name, r in rows.items()} == {
        grid["lstsq-0.5"]: "finished",
        grid["lstsq-1.0"]: "failed",
        grid["mse-0.5"]: "stale",
        grid["mse-1.0"]: "unfitted",
        old: "not-in-grid",
    }
    assert "larger than the extracted fraction 0.5" in rows[grid["lstsq-1.0"]]["why"]
    assert "maps.safetensors is damaged" in rows[grid["mse-0.5"]]["why"]
    assert rows[old]["top1"] == {"shapes:test": result(folder, old)["metrics"]["acc1"]}
    assert rows[old]["seed"] == 7 and rows[grid["mse-1.0"]]["epochs"] == 2 and rows[grid["mse-1.0"]]["top1"] == {}
    assert (
        rows[grid["lstsq-0.5"]]["encoder"],
        rows[grid["lstsq-0.5"]]["variant"],
        rows[grid["lstsq-0.5"]]["train"],
        rows[grid["lstsq-0.5"]]["fraction"],
    ) == ("cnn", "lstsq", ["shapes:train"], 0.5)
    table = run_main(folder, "runs")[1].splitlines()
    assert table[0].split()[:8] == ["RUN", "ENCODER", "VARIANT", "TRAIN", "FRACTION", "EPOCHS", "SEED", "STATUS"]
    assert f"{100 * result(folder, old)['metrics']['acc1']:.1f}" in next(line for line in table if old in line)
    assert [line.split()[0] for line in run_main(folder, "runs", "--status", "failed")[1].splitlines()[1:]] == [
        grid["lstsq-1.0"]
    ]
    assert len(run_main(folder, "runs", "--variant", "mse", "--fraction", "1.0")[1].splitlines()) == 2
    assert run_main(folder, "runs", "--fraction", "0.25")[1].strip() == "no runs"
    code, _, err = run_main(folder, "runs", "--encoder", "cnm")  # a typo is not an empty answer
    assert code == 2 and "no run has encoder 'cnm': did you mean 'cnn'?" in err
    code, _, err = run_main(folder, "runs", "--variant", "mse+cyc")
    assert code == 2 and "no run has variant 'mse+cyc'" in err


def test_export_and_predict_take_the_name_runs_prints(listed):
    folder, _, grid, _ = listed
    [line] = run_main(folder, "runs", "--status", "finished")[1].splitlines()[1:]
    name = line.split()[0]
    Image.new("RGB", (64, 64), "red").save(folder / "red.png")
    code, _, err = run_main(folder, "predict", "red.png", "--model", name, "--classes", "a,b")
    assert code == 2 and f"run {name} is not exported yet: run `pipeline export {name}` first" in err
    code, out, err = run_main(folder, "export", name)
    assert code == 0, err
    assert json.loads((folder / "out/exports" / name / "zoomshot_model.json").read_text())["name"] == grid["lstsq-0.5"]
    code, out, err = run_main(folder, "predict", "red.png", "--model", name, "--classes", "a,b", "--no-progress")
    assert code == 0 and out.startswith("red.png: "), err


def test_read_results_is_a_table_of_settings_and_metrics(listed):
    folder, old, grid, _ = listed
    rows = zoomshot.read_results(folder / "out/results")
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    ours = {(r["run"], r["method"]): r for r in records}
    row = ours[(old, "lstsq")]
    assert (row["encoder"], row["variant"], row["fraction"], row["seed"], row["train"], row["dataset"]) == (
        "cnn",
        "lstsq",
        0.5,
        7,
        "shapes:train",
        "shapes",
    )
    assert row["acc1"] == result(folder, old)["metrics"]["acc1"] and "per_class_acc" not in row
    assert ("clip", "clip") in ours and (grid["mse-0.5"], "zoomshot") in ours
    assert ours[(grid["mse-0.5"], "zoomshot")]["params.epochs"] == 2
    without_pandas = (
        "import sys; sys.modules['pandas'] = None; import zoomshot; "
        f"rows = zoomshot.read_results({str(folder / 'out/results')!r}); "
        "print(type(rows).__name__, len(rows), sorted(rows[0])[:3])"
    )
    got = subprocess.run([sys.executable, "-c", without_pandas], env=ENV, capture_output=True, text=True, check=True)
    assert got.stdout.split()[:2] == ["list", str(len(records))]


def test_import_zoomshot_loads_no_torch():
    code = "import sys, zoomshot; zoomshot.run_stage; zoomshot.read_results; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_run_stage_runs_the_cli_stage_with_overrides(tmp_path, cache, monkeypatch):
    write(tmp_path, cache, 'variants = ["lstsq", "mse"]\nfractions = [0.5, 1.0]\n')
    monkeypatch.chdir(tmp_path)
    cfg = load(tmp_path / "pipeline.toml")
    [wanted] = dry_run(tmp_path, "--variants", "lstsq", "--fractions", "0.5", "--seeds", "3")
    assert zoomshot.run_stage("fit", cfg, variants=["lstsq"], fractions=[0.5], seeds=[3]) == 0
    assert [p.name for p in (tmp_path / "out/runs").glob("*/run.json")] == ["run.json"]
    assert (tmp_path / "out/runs" / wanted / "run.json").is_file()
    assert cfg.fit.fractions == [0.5, 1.0] and cfg.fit.seeds == [0]  # the caller's config is left as it was
    assert zoomshot.run_stage("evaluate", "pipeline.toml", runs=[wanted]) == 0  # a path works too
    assert (tmp_path / "out/results" / wanted / "shapes-test.json").is_file()
    with pytest.raises(PipelineError, match="unknown config key 'fit.epoch'"):
        zoomshot.run_stage("fit", cfg, epoch=[3])
    with pytest.raises(ValueError, match="unknown stage 'fitt'"):
        zoomshot.run_stage("fitt", cfg)


def _prune_on_a_terminal(folder, answer: str) -> tuple[int, str]:
    """`pipeline runs --prune` in its own process with a terminal (a pty) as its stdin, answered `answer`."""
    import os
    import pty

    main, terminal = pty.openpty()
    code = "import sys\nfrom zoomshot.cli.main import main\nsys.argv = ['pipeline', 'runs', '--prune']\nmain()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=folder, env=ENV, stdin=terminal, stdout=subprocess.PIPE, text=True
    )
    os.close(terminal)
    os.write(main, f"{answer}\n".encode())
    out, _ = proc.communicate(timeout=300)
    os.close(main)
    return proc.returncode, out


def test_prune_removes_only_what_the_config_no_longer_names(listed, tmp_path):
    """Last here: it removes the old run of `listed` (twice: asked on a terminal, then with --yes)."""
    import shutil

    folder, old, grid, _ = listed
    runs_dir = folder / "out/runs"
    code, out, err = run_main(folder, "runs", "--prune")  # no terminal, no --yes: nothing goes
    assert code == 2 and old in out and "pass --yes" in err and (runs_dir / old).is_dir()
    code, out = _prune_on_a_terminal(folder, "n")
    assert code == 0 and "remove them? [y/N]" in out and "nothing removed" in out and (runs_dir / old).is_dir()
    shutil.copytree(runs_dir / old, tmp_path / "run")
    shutil.copytree(folder / "out/results" / old, tmp_path / "results")
    code, out = _prune_on_a_terminal(folder, "y")
    assert code == 0 and "removed 1 of 1" in out and not (runs_dir / old).exists()
    shutil.copytree(tmp_path / "run", runs_dir / old)
    shutil.copytree(tmp_path / "results", folder / "out/results" / old)
    code, out, _ = run_main(folder, "runs", "--prune", "--yes")
    assert code == 0 and "removed 1 of 1" in out
    assert not (runs_dir / old).exists() and not (folder / "out/results" / old).exists()
    assert all((runs_dir / grid[k]).is_dir() for k in ("lstsq-0.5", "mse-0.5"))
    assert (runs_dir / f"{grid['lstsq-1.0']}.failed.txt").is_file()
    assert "not-in-grid" not in run_main(folder, "runs")[1]
