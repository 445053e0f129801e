"""zoomshot: the package namespace of the pipeline's folders (`zoomshot.cache`, `zoomshot.extract`, ...),
and the entry points for notebooks and scripts:

* `load_model(DIR)` loads an exported model (`pipeline export`) the way `open_clip.create_model_and_transforms`
  + `get_tokenizer` do;
* `read_results(FOLDER)` reads a results folder (`[paths] results_dir`) into a table;
* `run_stage(STAGE, CONFIG, **overrides)` runs a stage with the same config and code as `pipeline STAGE`.

Everything is imported when first used, so `import zoomshot` stays free of torch and model code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_model", "read_results", "run_stage"]

STAGES = ("extract", "fit", "evaluate", "report")


def read_results(folder: str | Path) -> Any:
    """Every result file under `folder` as one row each: run, dataset, split, encoder, method, variant,
    fraction, epochs, seed, train, `params.<name>` and each scalar metric (acc1, acc5, ...). A pandas
    DataFrame when pandas is importable, else a list of dicts. Unreadable files are skipped with a warning."""
    from zoomshot.evaluate.report import load_results, tidy_rows

    rows = tidy_rows(load_results(Path(folder)))
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)


def run_stage(stage: str, config: Any = None, **overrides: Any) -> Any:
    """Run `pipeline STAGE` (extract, fit, evaluate or report) from Python: `config` is a config file's path
    (default ./pipeline.toml) or the `Config` object the CLI builds (`zoomshot.cli.config.load(path)`), and
    `overrides` replace keys of the stage's table, checked like the file's (`run_stage("fit", "pipeline.toml",
    epochs=[5])`). The config object is not changed. Returns what the CLI's stage returns: fit the number of
    failed runs, evaluate the number of skipped (run, test split) pairs. Bad input raises `PipelineError`."""
    import dataclasses

    from zoomshot.cli import main
    from zoomshot.cli.config import Config, load, with_overrides

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    cfg = config if isinstance(config, Config) else load(None if config is None else Path(config))
    cfg = dataclasses.replace(cfg, **{stage: with_overrides(getattr(cfg, stage), overrides, stage)})
    return getattr(main, f"do_{stage}")(cfg)


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from zoomshot.export.model import load_model

        return load_model
    raise AttributeError(f"module 'zoomshot' has no attribute {name!r}")
