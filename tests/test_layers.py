"""Layers point one way: cli -> export -> stages (extract, fit, evaluate) -> cache. Each stage is imported
with the CLI and the other stages made unimportable; `export` (which builds models with `extract`) with
the CLI, `fit` and `evaluate` made unimportable; `cache` with every stage made unimportable."""

import pkgutil
import subprocess
import sys

import pytest

import zoomshot.cache
import zoomshot.evaluate
import zoomshot.export
import zoomshot.extract
import zoomshot.fit

PACKAGES = {
    "cache": zoomshot.cache,
    "extract": zoomshot.extract,
    "fit": zoomshot.fit,
    "evaluate": zoomshot.evaluate,
    "export": zoomshot.export,
}


def _modules(name: str) -> list[str]:
    return [f"zoomshot.{name}.{m.name}" for m in pkgutil.iter_modules(PACKAGES[name].__path__)]


def _imports_without(modules: list[str], blocked: list[str]) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{b!r}] = None\n" for b in blocked)
        + "".join(f"import {m}\n" for m in modules)
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}
    )


@pytest.mark.parametrize("stage", ["extract", "fit", "evaluate"])
def test_a_stage_imports_neither_the_cli_nor_another_stage(stage):
    others = [f"zoomshot.{s}" for s in ("cli", "extract", "fit", "evaluate", "export") if s != stage]
    modules = _modules(stage)
    assert len(modules) >= 5, modules
    proc = _imports_without(modules, others)
    assert proc.returncode == 0, proc.stderr


def test_export_imports_neither_the_cli_nor_fit_nor_evaluate():
    modules = _modules("export") + ["zoomshot"]
    proc = _imports_without(modules, ["zoomshot.cli", "zoomshot.fit", "zoomshot.evaluate"])
    assert len(modules) >= 6 and proc.returncode == 0, proc.stderr


def test_the_cache_imports_no_stage():
    proc = _imports_without(
        _modules("cache"), [f"zoomshot.{s}" for s in ("cli", "extract", "fit", "evaluate", "export")]
    )
    assert proc.returncode == 0, proc.stderr


def test_the_check_itself_catches_a_wrong_way_import():
    proc = _imports_without(["zoomshot.cli.config"], ["zoomshot.fit"])  # the CLI does use the stages
    assert proc.returncode != 0 and "zoomshot.fit" in proc.stderr
