"""The CLI starts fast: `pipeline --help`, `pipeline list` and a config error import no torch, no HDF5,
no plotting and no stage module (each command imports its stage when it runs). Checked on what a fresh
process imports, not on time, so the tests hold on a busy machine (benchmarks/cli_speed.py times it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ENV, pipeline, shipped_config, write_toml

HEAVY = ("torch", "open_clip", "timm", "h5py", "dask", "matplotlib", "safetensors", "PIL")
STAGES = ("zoomshot.extract.runner", "zoomshot.fit.sweep", "zoomshot.evaluate.scoring", "zoomshot.cache.store")


def _imported_by(folder, *args: str) -> tuple[int, str, list[str]]:
    """Runs `pipeline ARGS` in a fresh process; its exit code, stderr, and which of HEAVY and STAGES it imported."""
    code = (
        f"import json, sys\nfrom zoomshot.cli.main import main\nsys.argv = ['pipeline', *{list(args)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        f"print(json.dumps([code, [m for m in {HEAVY + STAGES!r} if m in sys.modules]]), file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=ENV, capture_output=True, text=True, check=False
    )
    *lines, last = proc.stderr.strip().splitlines()
    exit_code, imported = json.loads(last)
    return exit_code, "\n".join(lines), imported


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["fit", "--help"],
        ["evaluate", "--help"],
        ["rehearse", "--help"],
        ["runs", "--help"],
        ["list", "datasets"],
        ["list", "adapters"],
        ["list", "metrics"],
        ["list", "presets"],
        ["list", "encoders"],
        ["list", "variants"],
        ["list", "methods"],
        ["list"],
        ["cache", "--help"],
        ["cache", "import", "--help"],
    ],
)
def test_help_and_list_import_nothing_heavy(tmp_path, args):
    exit_code, err, imported = _imported_by(tmp_path, *args)
    assert exit_code == 0, err
    assert imported == [], f"pipeline {' '.join(args)} imported {imported}"


@pytest.mark.parametrize(
    "table, key, value, says",
    [
        ("fit", "epoch", [5], "unknown config key 'fit.epoch' (did you mean 'epochs'?)"),
        ("evaluate", "adapters", ["tip-adaptor"], "config key 'evaluate.adapters' item 0: must be one of"),
        ("report", "metric", "top1", "config key 'report.metric' must be one of"),
    ],
)
def test_config_error_imports_nothing_heavy(tmp_path, table, key, value, says):
    """A typo in the config is reported before any stage is imported (the shipped config names adapters,
    so the check of [evaluate] and [report] values runs, torch-free)."""
    data = shipped_config()
    data[table][key] = value
    write_toml(tmp_path, data)
    exit_code, err, imported = _imported_by(tmp_path, "fit", "--dry-run")
    assert exit_code == 2 and says in err, err
    assert imported == [], f"a config error imported {imported}"


def test_help_lists_every_command(tmp_path):
    """`pipeline --help` names every command in its text (click's own list would import each), and each
    name resolves to a command."""
    import click

    from zoomshot.cli.main import cli

    out = pipeline(tmp_path, "--help").stdout
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        assert f"pipeline {name} " in out, f"`pipeline --help` does not mention {name}"
        assert isinstance(cli.get_command(ctx, name), click.Command), name


def test_adapter_names_are_the_adapters():
    """The torch-free names the config is checked against are the adapters `evaluate/adapters.py` defines."""
    from zoomshot.evaluate.adapters import ADAPTERS
    from zoomshot.evaluate.grids import ADAPTER_NAMES, GRIDS

    assert ADAPTER_NAMES == tuple(ADAPTERS)
    assert all(tuple(grid[name]) == ADAPTERS[name].searched for grid in GRIDS.values() for name in ADAPTERS)
