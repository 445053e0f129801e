"""README's "Use your own data and weights" config (configs/my-data.toml) is the file the README shows, and
it works on an ImageFolder as the README says: it loads, its dataset opens with the folder names as classes,
its models build (random weights: no download) at their real widths, and its fit grid expands."""

import re
from pathlib import Path

import pytest
from PIL import Image

from zoomshot.cli.config import load
from zoomshot.extract.datasets import open_split
from zoomshot.extract.encoders import build_encoder
from zoomshot.fit.sweep import expand

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "my-data.toml"


def test_readme_shows_the_config_file_as_it_is():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- config:my-data -->\n```toml\n(.*?)```\n<!-- /config:my-data -->", readme, re.S)
    assert block, "README has no <!-- config:my-data --> block"
    assert block.group(1) == CONFIG.read_text()


@pytest.fixture
def my_data(tmp_path, monkeypatch):
    for split, count in (("train", 3), ("test", 2)):
        for cls, colour in (("cat", "red"), ("dog", "blue")):
            folder = tmp_path / "data" / "my-data" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40 + i, 30), colour).save(folder / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    return load(CONFIG)


def test_the_worked_config_loads_and_opens_the_image_folder(my_data):
    spec = my_data.project.dataset("my-data").spec()
    train, test = open_split(spec, "train"), open_split(spec, "test")
    assert train.classnames == test.classnames == ["cat", "dog"]
    assert (len(train.dataset), len(test.dataset)) == (6, 4)
    assert my_data.fit.train == ["my-data:train"] and my_data.evaluate.test == ["my-data:test"]


def test_the_worked_config_builds_its_models_and_grid(my_data):
    encoder = build_encoder({**my_data.project.encoder("convnext").spec(), "pretrained": ""}, "cpu")
    clip = build_encoder({**my_data.project.encoder("clip").spec(), "pretrained": ""}, "cpu")
    assert (encoder.dim, clip.dim) == (768, 512)
    runs = [r["record"] for r in expand(my_data.project, my_data.fit)]
    assert len(runs) == 4 * 2 * 3  # variants x fractions x seeds, one encoder
    assert {r["encoder"] for r in runs} == {"convnext"}
