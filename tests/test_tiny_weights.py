"""The shipped tiny world weights (issue 5): checksums, loading through the pipeline's routes, a
zero-shot accuracy floor for the tiny CLIP, and no held-out combination in its training captions."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "extract" / "assets" / "weights"
sys.path.insert(0, str(REPO / "scripts"))
wc = importlib.import_module("world_common")

#: measured top-1 of the shipped tiny CLIP on ShapesWorld("test", size=300, seed=0) is 0.890 (the same
#: recipe stopped at 600 steps gets 0.61 on 2,000 images); the floor sits a few points under
#: (see extract/assets/weights/README.md); a regression of a few points fails the test.
CLIP_TOP1_FLOOR_300 = 0.86
FILES = ("tiny_clip.safetensors", "tiny_cnn.safetensors", "tiny_vit.safetensors")


def _sums() -> dict[str, str]:
    out = {}
    for line in (WEIGHTS / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = digest
    return out


def test_files_match_sha256sums():
    sums = _sums()
    assert set(FILES) <= set(sums), sums
    total = 0
    for name in FILES:
        data = (WEIGHTS / name).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == sums[name], f"{name} does not match SHA256SUMS"
    assert total <= 21_000_000


def _assert_all_loaded(model, file: Path) -> None:
    """Every tensor of the file is in the model with the same value, and vice versa (no silent
    strict=False miss)."""
    saved = load_file(str(file))
    state = model.state_dict()
    assert set(saved) == set(state), set(saved) ^ set(state)
    for k, v in saved.items():
        assert torch.equal(state[k].to(v.dtype), v), k


def test_tiny_clip_loads_and_zero_shot_floor():
    import open_clip

    open_clip.add_model_config(wc.MODEL_CONFIG_DIR)
    file = WEIGHTS / "tiny_clip.safetensors"
    model, _, val = open_clip.create_model_and_transforms("zoomshot-tiny-clip", pretrained=str(file))
    model.eval()
    _assert_all_loaded(model, file)
    tok = open_clip.get_tokenizer("zoomshot-tiny-clip")
    test = wc.test_world(300, 0)
    assert wc.check_bank_matches_transform(test, val, n=4) == 0.0
    res = wc.clip_zero_shot(model, val, tok, test)
    assert res["top1"] >= CLIP_TOP1_FLOOR_300, res
    with torch.no_grad():
        assert model.encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, 128)


@pytest.mark.parametrize(
    "name,file,width",
    [
        ("test_resnet", "tiny_cnn.safetensors", 96),
        ("test_vit", "tiny_vit.safetensors", 64),
    ],
)
def test_timm_encoders_load_with_num_classes_0(name, file, width):
    import timm

    path = WEIGHTS / file
    options = {"img_size": 64} if name == "test_vit" else {}
    model = timm.create_model(
        name,
        num_classes=0,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), input_size=(3, 64, 64), crop_pct=1.0),
        **options,
    ).eval()
    _assert_all_loaded(model, path)
    assert model.num_features == width
    cfg = timm.data.resolve_model_data_config(model)
    assert tuple(cfg["input_size"]) == (3, 64, 64) and cfg["crop_pct"] == 1.0
    bank, _ = wc.render_bank(wc.test_world(8, 0))
    x = wc.normalize(bank, *wc.transform_mean_std(timm.data.create_transform(**cfg)))
    with torch.no_grad():
        f = model(x)
    assert f.shape == (8, width) and torch.isfinite(f).all()
    # trained, not random: features differ between images of different shapes / colours
    assert f.std(0).mean() > 1e-3


def test_clip_training_captions_never_hold_out_combinations():
    W = wc.world_module()
    train_clip = importlib.import_module("train_tiny_clip")
    parser_defaults = {"bank": 32768, "seed": 0}  # the script's defaults; checked below
    src = Path(train_clip.__file__).read_text()
    assert "wc.clip_training_world(" in src and "include_held_out" not in src.replace("include_held_out=False", "")
    assert "default=32768" in src and 'ap.add_argument("--seed", type=int, default=0)' in src
    world = wc.clip_training_world(parser_defaults["bank"], parser_defaults["seed"])
    assert world.include_held_out is False and world.split == "train"
    labels = world.labels()
    assert not any(W.is_held_out(int(x)) for x in labels)
    caps = wc.clip_training_captions(6000, 0)
    assert len(caps) == 6000 and not any(W.is_held_out(c) for c in caps)
    # every seen class does appear, so the check is not vacuous
    assert len(set(labels.tolist())) == 64 - len(W.HELD_OUT)
