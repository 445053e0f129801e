"""configs/paper.toml cannot run here (no weights, no datasets), but every architecture it names must
build offline with random weights, with the feature width and preprocessing the paper's setting uses."""

from pathlib import Path

import pytest

from zoomshot.cli.config import load
from zoomshot.extract.encoders import build_encoder

CONFIG = Path(__file__).parents[1] / "configs" / "paper.toml"
DATA_FILES = ("data/imagenet100.txt", "data/en_classnames.json", "data/herbarium19_classnames.txt")


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The config as read in a folder that holds the small files it names (class lists and names);
    the config checks that they exist."""
    folder = tmp_path_factory.mktemp("paper")
    for name in DATA_FILES:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text("{}" if name.endswith(".json") else "x\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        yield load(CONFIG)


def test_the_config_names_files_that_must_exist(tmp_path, monkeypatch):
    from zoomshot.cache.errors import PipelineError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="class_list' must name an existing file"):
        load(CONFIG)


EXPECTED = {  # name -> (feature width, input size)
    "clip": (512, 224),
    "mobilenetv3-s": (1024, 224),
    "densenet121": (1024, 224),
    "resnet18": (512, 224),
    "dino-vitb16": (768, 224),
    "dinov2-vitb14": (768, 518),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_architecture_builds_with_expected_width_and_transform(paper, name):
    spec = {**paper.project.encoder(name).spec(), "pretrained": ""}  # random weights, no download
    enc = build_encoder(spec, "cpu")
    width, size = EXPECTED[name]
    assert enc.dim == width
    crop = enc.transform.transforms[1].size  # Resize, CenterCrop, (ToRGB,) ToTensor, Normalize
    assert tuple(crop) == (size, size) if isinstance(crop, (tuple, list)) else crop == size


def test_paper_grid_and_subsets(paper):
    assert paper.extract.fraction_of("imagenet:train") == 0.2
    assert paper.extract.fraction_of("cifar10:test") == 1.0
    assert len(paper.evaluate.test) == 9 and paper.clip.model.endswith("-quickgelu")
    from zoomshot.fit.sweep import expand

    runs = [r["record"] for r in expand(paper.project, paper.fit)]
    assert {(r["fraction"], r["epochs"]) for r in runs if r["method"] == "zoomshot"} >= {(0.2, 1), (0.01, 20)}
