"""configs/paper.toml cannot run here (no weights, no datasets), but every architecture it names must
build offline with random weights, with the feature width and preprocessing the paper's setting uses."""
from pathlib import Path

import pytest

from zoomshot.cli import config as C
from zoomshot.extract.encoders import build_encoder

PAPER = C.load(Path(__file__).parents[1] / "configs" / "paper.toml")
EXPECTED = {   # name -> (feature width, input size)
    "clip": (512, 224), "mobilenetv3-s": (1024, 224), "densenet121": (1024, 224), "resnet18": (512, 224),
    "dino-vitb16": (768, 224), "dinov2-vitb14": (768, 518),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_architecture_builds_with_expected_width_and_transform(name):
    spec = {**PAPER.encoder(name).identity(), "pretrained": ""}     # random weights, no download
    enc = build_encoder(spec, "cpu")
    width, size = EXPECTED[name]
    assert enc.dim == width
    crop = enc.transform.transforms[1].size          # Resize, CenterCrop, (ToRGB,) ToTensor, Normalize
    assert tuple(crop) == (size, size) if isinstance(crop, (tuple, list)) else crop == size


def test_paper_grid_and_subsets():
    assert PAPER.extract.fraction_of("imagenet:train") == 0.2
    assert PAPER.extract.fraction_of("cifar10:test") == 1.0
    assert len(PAPER.evaluate.test) == 9 and PAPER.clip.model.endswith("-quickgelu")
    from zoomshot.fit.sweep import expand
    runs = expand(PAPER)
    assert {(r["fraction"], r["params"].get("epochs")) for r in runs if r["method"] == "zoomshot"} >= {(0.2, 1), (0.01, 20)}
