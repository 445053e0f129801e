"""Bad configuration is one line naming the key, exit 2, before any work and without writing anything.

Run through the console script's own `main()` in this process (a subprocess per case would cost
seconds each); the fault tests use real subprocesses.
"""

import copy
import tomllib

import pytest
import tomli_w
from helpers import TINY_WORLD, run_main
from helpers import one_line_error as _one_line_error
from safetensors.torch import save_file

BASE = tomllib.loads(TINY_WORLD.format(train=64, test=32, batch=16, templates="shapes"))


def _set(data: dict, path: str, value) -> dict:
    """A copy of `data` with the dotted `path` ("datasets.0.options.train_size") set to `value`."""
    data = copy.deepcopy(data)
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[int(leaf) if isinstance(node, list) else leaf] = value
    return data


CASES = [
    ("extract.batch_size", 0, "'extract.batch_size' must be >= 1"),
    ("extract.batch_size", -4, "'extract.batch_size' must be >= 1"),
    ("extract.num_workers", -2, "'extract.num_workers' must be >= -1"),
    ("extract.device", "tpu9", "'extract.device' must be auto, cpu"),
    ("extract.fraction", 0, "'extract.fraction' must be a fraction"),
    ("extract.split_fractions", {"shapes:train": 2}, "'extract.split_fractions' entry 'shapes:train'"),
    ("extract.splits", ["shapes"], "'extract.splits' item 0: must be DATASET:SPLIT"),
    ("extract.splits", ["nope:train"], "'extract.splits': unknown dataset 'nope'"),
    ("extract.on_bad_image", "ignore", "'extract.on_bad_image' must be one of 'skip', 'fail'"),
    ("evaluate.chunk_rows", 0, "'evaluate.chunk_rows' must be >= 1"),
    ("evaluate.chunk_rows", -5, "'evaluate.chunk_rows' must be >= 1"),
    ("evaluate.adapters", ["tip-y"], "'evaluate.adapters' item 0: must be one of 'tip-adapter', 'tip-x'"),
    ("evaluate.adapter_grid", "narrow", "'evaluate.adapter_grid' must be one of"),
    ("evaluate.support", "shapes", "'evaluate.support' must be DATASET:SPLIT"),
    ("evaluate.shots", -1, "'evaluate.shots' must be >= 0"),
    ("fit.seeds", [], "'fit.seeds' must not be empty"),
    ("fit.fractions", [1.5], "'fit.fractions' item 0: must be a fraction in (0, 1]"),
    ("fit.epochs", [0], "'fit.epochs' item 0: must be >= 1"),
    ("fit.workers", 0, "'fit.workers' must be >= 1"),
    ("fit.device", "tpu9", "'fit.device' must be auto, cpu"),
    ("fit.train", ["shapes:train+"], "'fit.train' item 0: must be DATASET:SPLIT or A:SPLIT+B:SPLIT"),
    ("fit.encoders", ["nope"], "'fit.encoders': unknown encoder 'nope'"),
    ("datasets.0.options.train_size", -5, "'datasets[0].options.train_size' must be >= 0"),
    ("datasets.0.options.train_size", "many", "'datasets[0].options.train_size' must be int"),
    ("datasets.0.options.image_size", 0, "'datasets[0].options.image_size' must be >= 32"),
    ("datasets.0.options.trainsize", 10, "did you mean 'train_size'"),
    ("datasets.0.kind", "imagefolders", "unknown dataset kind 'imagefolders' (did you mean 'imagefolder'?)"),
    ("datasets.0.name", "../../x", "'datasets[0].name' must be a name"),
    ("encoders.0.name", "a/b", "'encoders[0].name' must be a name"),
    ("clip.name", ".hidden", "'clip.name' must be a name"),
    ("clip.batch_size", 0, "'clip.batch_size' must be >= 1"),
    ("clip.templates_file", "missing.json", "'clip.templates_file' names no file: missing.json"),
    ("clip.classfree_prompts", "missing.txt", "'clip.classfree_prompts' names no file: missing.txt"),
    ("encoders.1.pretrained", "nowhere/vit.safetensors", "'encoders[1].pretrained': weights not found"),
    ("encoders.0.micro_batch", True, "'encoders[0].micro_batch' must be int"),
    ("paths", "out", "config key 'paths' must be a table"),
    ("extract.captions", ["shapes"], "'extract.captions' item 0: must be DATASET:SPLIT"),
    ("extract.captions", ["nope:test"], "config key 'extract.captions': unknown dataset 'nope'"),
    ("evaluate.retrieval", "yes", "'evaluate.retrieval' must be bool"),
]


@pytest.mark.parametrize("path, value, needle", CASES, ids=[f"{c[0]}={c[1]!r}" for c in CASES])
def test_bad_value_is_one_line_naming_the_key(tmp_path, path, value, needle):
    (tmp_path / "pipeline.toml").write_text(tomli_w.dumps(_set(BASE, path, value)))
    _one_line_error(*run_main(tmp_path, "extract", "--no-progress")[::2], needle)
    assert not (tmp_path / "out").exists()


def test_duplicate_names_are_refused(tmp_path):
    data = copy.deepcopy(BASE)
    data["datasets"].append(dict(data["datasets"][0]))
    (tmp_path / "pipeline.toml").write_text(tomli_w.dumps(data))
    _one_line_error(*run_main(tmp_path, "fit")[::2], "dataset names must be unique")


@pytest.mark.parametrize(
    "definition, needle",
    [
        ({"method": "zoomshot", "w_kdd": 1.0}, "'fit.definitions.bad.w_kdd' (did you mean 'w_kd'?)"),
        ({"method": "zoomshot", "batch_size": 0}, "fit.definitions.bad': batch_size must be >= 1"),
        ({"method": "zoomshot", "lr": "fast"}, "'fit.definitions.bad.lr' must be float"),
        ({"method": "lstsq", "ridge": -1.0}, "'fit.definitions.bad.ridge' must be >= 0"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"w_mse": 1.0}, "[fit.definitions.bad] must be a table with a `method` key"),
        ({"method": "lstsq", "seed": 3}, "'seed' is set by the sweep"),
    ],
)
def test_bad_variant_definition_stops_before_any_run(tmp_path, definition, needle):
    data = _set(_set(BASE, "fit.definitions.bad", definition), "fit.variants", ["lstsq", "bad"])
    (tmp_path / "pipeline.toml").write_text(tomli_w.dumps(data))
    _one_line_error(*run_main(tmp_path, "fit")[::2], needle)
    assert not (tmp_path / "out").exists()


def test_bad_trainer_setting_and_unknown_variant(tmp_path):
    (tmp_path / "pipeline.toml").write_text(tomli_w.dumps(_set(BASE, "fit.trainer", {"batch_size": 0})))
    _one_line_error(*run_main(tmp_path, "fit")[::2], "fit.trainer': batch_size must be >= 1")
    (tmp_path / "pipeline.toml").write_text(tomli_w.dumps(_set(BASE, "fit.variants", ["nope"])))
    _one_line_error(*run_main(tmp_path, "fit", "--dry-run")[::2], "unknown fit variant 'nope'")


def test_command_line_values_are_checked_like_file_values(tmp_path):
    (tmp_path / "pipeline.toml").write_text(tomli_w.dumps(BASE))
    _one_line_error(*run_main(tmp_path, "extract", "--batch-size", "0")[::2], "'extract.batch_size' must be >= 1")
    _one_line_error(*run_main(tmp_path, "fit", "--fractions", "2")[::2], "'fit.fractions' item 0")


def test_broken_files(tmp_path):
    cfg = tmp_path / "pipeline.toml"
    cfg.write_bytes(b'[clip]\nname = "clip\xe9"\n')
    _one_line_error(*run_main(tmp_path, "extract")[::2], "is not UTF-8 text")
    cfg.write_text("[clip\nname = 1\n")
    _one_line_error(*run_main(tmp_path, "extract")[::2], "is not valid TOML")
    cfg.write_text(tomli_w.dumps({k: v for k, v in BASE.items() if k != "clip"}))
    _one_line_error(*run_main(tmp_path, "extract")[::2], "has no [clip] table")
    cfg.unlink()
    _one_line_error(*run_main(tmp_path, "cache", "ls")[::2], "no pipeline.toml in", "--config PATH")


def test_help_works_with_a_broken_config_and_cache_commands_take_config(tmp_path):
    (tmp_path / "pipeline.toml").write_text("[extract]\nbatch_size = 0\n")
    for args in (["extract", "--help"], ["fit", "-h"], ["cache", "ls", "--help"], ["list"]):
        code, out, err = run_main(tmp_path, *args)
        assert code == 0 and ("Usage:" in out or "datasets:" in out), (args, out, err)
    (tmp_path / "other.toml").write_text(tomli_w.dumps(BASE))
    for args in (["cache", "ls", "--config", "other.toml"], ["cache", "--config", "other.toml", "ls"]):
        code, out, err = run_main(tmp_path, *args)
        assert code == 0 and "(empty)" in out, (args, out, err)


def test_cache_dir_that_cannot_be_written(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "pipeline.toml").write_text(tomli_w.dumps(_set(BASE, "paths.cache_dir", "afile/cache")))
    _one_line_error(*run_main(tmp_path, "extract")[::2], "cannot write to", "paths.cache_dir")


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"this is not a safetensors file", "cannot build timm 'test_vit'"),
        (None, "does not fit timm model 'test_vit'"),  # the weights of another architecture
    ],
)
def test_weights_file_that_does_not_load(tmp_path, content, needle):
    weights = tmp_path / "vit.safetensors"
    if content is None:
        import torch

        save_file({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, str(weights))
    else:
        weights.write_bytes(content)
    (tmp_path / "pipeline.toml").write_text(tomli_w.dumps(_set(BASE, "encoders.1.pretrained", str(weights))))
    _one_line_error(*run_main(tmp_path, "extract", "--no-progress")[::2], needle)
    assert not list((tmp_path / "out/cache/features").glob("*.h5"))
