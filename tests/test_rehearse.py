"""`pipeline rehearse`: a config's whole grid on generated stand-ins at real shapes, and the real run's
projection. Tiny models keep it to seconds; the datasets are real kinds (their published sizes, layouts
and class names are what is rehearsed)."""

import json
import math

import h5py
import pytest
from helpers import pipeline, write_toml

from zoomshot.extract.rehearsal import REAL


def config(**clip) -> dict:
    return {
        "paths": {
            "cache_dir": "real/cache",
            "runs_dir": "real/runs",
            "results_dir": "real/results",
            "report_dir": "real/report",
        },
        "clip": {
            "model": "zoomshot-tiny-clip",
            "pretrained": "assets:weights/tiny_clip.safetensors",
            "templates": "openai-imagenet",
            **clip,
        },
        "encoders": [
            {
                "name": "cnn",
                "model": "test_resnet",
                "pretrained": "assets:weights/tiny_cnn.safetensors",
                "options": {"pretrained_cfg_overlay": {"input_size": [3, 64, 64], "crop_pct": 1.0}},
            }
        ],
        "datasets": [
            {"name": "birds", "kind": "cub200", "root": "data/cub"},  # the real ImageFolder layout
            {
                "name": "inet100",
                "kind": "imagenet",
                "root": "data/inet",
                "options": {"class_list": "data/in100.txt"},
            },  # a file that is not here
            {"name": "c10", "kind": "cifar10", "root": "data/c10", "options": {"download": True}},
            {"name": "mine", "kind": "imagefolder", "root": "data/mine"},  # the user's own, not here
        ],
        "extract": {
            "splits": ["birds:train", "birds:test", "inet100:val", "c10:test", "mine:test"],
            "split_fractions": {"birds:train": 0.5},
            "batch_size": 16,
            "device": "cpu",
            "num_workers": 64,
        },
        "fit": {
            "train": ["birds:train"],
            "variants": ["mse+cyc+kd-lm", "lstsq"],
            "fractions": [0.5, 0.1],
            "epochs": [2],
            "seeds": [0],
            "device": "cuda:3",
            "workers": 2,
        },
        "evaluate": {"test": ["birds:test", "inet100:val", "c10:test", "mine:test"], "adapters": []},
    }


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rehearse")
    write_toml(folder, config())
    proc = pipeline(folder, "rehearse", "--classes", "3", "--per-class", "2", "--no-progress")
    return folder, proc


def test_every_stage_runs_and_the_table_says_so(rehearsed):
    folder, proc = rehearsed
    record = json.loads((folder / "rehearsal" / "rehearsal.json").read_text())
    stages = {s["name"]: s for s in record["stages"]}
    assert set(stages) >= {"extract", "fit", "evaluate", "report", "export", "predict", "calibrate fits"}
    assert not record["problems"], record["problems"]
    assert all(not s["problem"] and s["seconds"] > 0 and s["peak_mib"] > 0 for s in stages.values())
    assert (
        stages["fit"]["items"] == 4 and stages["predict"]["items"] == 6
    )  # fits: (zoomshot, lstsq) x 2 fractions; 3 x 2 test images
    table = (folder / "rehearsal" / "rehearsal.md").read_text()
    assert table in proc.stdout and "| extract |" in table and "FAILED" not in table
    # what differs from the real run is said: random weights, GPU devices, workers, substituted layouts
    notes = "\n".join(record["notes"])
    assert "random weights for clip, cnn" in notes and "fit.device = 'cuda:3' rehearsed on the CPU" in notes
    assert "num_workers = 64" in notes and "c10" in notes and "as an ImageFolder" in notes
    assert "fits rehearsed with seed 0 and 1 epoch" in notes
    assert "mine: 6 test generated images" in notes and "not on this machine" in notes
    assert not (folder / "real").exists()  # the real config's output folders are never touched


def test_stand_ins_have_real_layouts_names_and_sizes(rehearsed):
    folder, _ = rehearsed
    data = folder / "rehearsal" / "data"
    assert sorted(p.name for p in (data / "inet100" / "val").iterdir()) == ["n01440764", "n01443537", "n01484850"]
    birds = sorted((data / "birds" / "test").iterdir())
    assert [p.name for p in birds] == ["000.birds class 1", "001.birds class 2", "002.birds class 3"]
    from PIL import Image

    with Image.open(next(birds[0].iterdir())) as img:
        w, h = img.size
    assert abs(w - 500) <= 100 and abs(h - 375) <= 75  # CUB's typical size, jittered
    # the smallest fit fraction (0.1 of the split) still leaves 2 training rows: 20 images, not 3 x 2
    assert sum(1 for _ in (data / "birds" / "train").rglob("*.jpg")) == 21
    names = {}
    for path in (folder / "rehearsal" / "cache").rglob("*.h5"):
        with h5py.File(path, "r") as f:
            if "classnames" in f and f.attrs.get("dataset"):
                names[f.attrs["dataset"]] = [n.decode() if isinstance(n, bytes) else n for n in f["classnames"][:]]
    assert names["inet100"] == ["tench", "goldfish", "great white shark"]  # open_clip's names
    assert names["c10"] == ["airplane", "automobile", "bird"]


def test_projection_is_exact_from_widths_and_published_counts(rehearsed):
    folder, _ = rehearsed
    proj = json.loads((folder / "rehearsal" / "rehearsal.json").read_text())["projection"]
    widths = {}
    for path in (folder / "rehearsal" / "cache").rglob("*.h5"):
        with h5py.File(path, "r") as f:
            if "features" in f:
                widths[f.attrs["encoder"]] = f["features"].shape[1]
    assert set(widths) == {"clip", "cnn"}
    images = (
        math.ceil(0.5 * REAL["cub200"].splits["train"])
        + REAL["cub200"].splits["test"]
        + REAL["imagenet"].splits["val"] // 10
        + REAL["cifar10"].splits["test"]
    )  # ImageNet-100: 100 of 1,000
    prompts = 80 * (200 + 100 + 10 + 3) + 960  # 80 templates x real classes + the generic set
    # (the user's own ImageFolder is not here: its images are not projected, its 3 rehearsed classes are)
    assert (proj["images"], proj["prompts"], proj["fits"]) == (images, prompts, 4)
    row = sum(2 * w + 16 for w in widths.values())  # float16 features + int64 index and label
    assert proj["cache_bytes"] == images * row + prompts * widths["clip"] * 4
    assert proj["fit_s"] > 0 and proj["extract_s"] > 0 and proj["text_s"] > 0


def test_world_prompts_on_real_data_are_a_problem_and_out_folders_are_guarded(tmp_path):
    write_toml(tmp_path, config(classfree_prompts="assets:classfree_prompts.txt"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    proc = pipeline(tmp_path, "rehearse", "--out", "mine", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "is not a rehearsal folder" in proc.stderr and (tmp_path / "mine" / "notes.txt").exists()
    from zoomshot.cli.rehearse_cmd import config_problems

    problems = config_problems(config(classfree_prompts="assets:classfree_prompts.txt"), ["cub200"])
    assert len(problems) == 1 and "something red" in problems[0]
    assert config_problems(config(), ["cub200"]) == []


def test_a_second_rehearsal_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    """The first is stopped at its first extraction batch (a fault point, not a delay); the second must
    neither wait nor delete the first's folder, and the first then finishes."""
    from helpers import Stopped

    write_toml(tmp_path, config())
    first = Stopped(
        tmp_path, "rehearse", "--classes", "2", "--per-class", "1", "--no-progress", point="extract.batch", k=1
    )
    first.wait_stopped()
    proc = pipeline(tmp_path, "rehearse", "--classes", "2", check=False)
    assert proc.returncode == 2 and "another `pipeline rehearse` is writing rehearsal" in proc.stderr
    assert (tmp_path / "rehearsal" / "data").is_dir()
    first.resume()
    code, output = first.finish()
    assert code == 0, output
    assert (tmp_path / "rehearsal" / "rehearsal.md").is_file()


def test_the_shipped_generic_prompt_set_is_what_its_script_makes():
    """The real-data prompt set is made, not hand-edited: OpenAI's 80 templates x COCO's 12 supercategories."""
    from scripts.make_generic_prompts import FILE, prompts, text
    from zoomshot.cache.layout import read_prompt_file

    assert FILE.read_text() == text()
    assert read_prompt_file(FILE) == prompts() and len(prompts()) == 80 * 12 == len(set(prompts()))
