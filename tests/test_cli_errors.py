"""Bad input is one clear line and exit code 2, never a traceback; nothing is written."""

import pytest
from helpers import one_line_error, pipeline, write_config


def _one_line_error(proc, *needles):
    one_line_error(proc.returncode, proc.stderr, *needles)


@pytest.mark.parametrize(
    "edit, needles",
    [
        (("batch_size = 64", "batch_sise = 64"), ("extract.batch_sise", "did you mean 'batch_size'")),
        (("batch_size = 64", 'batch_size = "big"'), ("extract.batch_size", "must be int")),
        (("[extract]", "[extrakt]"), ("extrakt", "did you mean 'extract'")),
    ],
)
def test_bad_config_key_or_type(tmp_path, edit, needles):
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace(*edit))
    _one_line_error(pipeline(tmp_path, "extract", check=False), *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, needle",
    [
        ("nowhere/vit.safetensors", "nowhere/vit.safetensors"),
        ("assets:weights/no_such.safetensors", "weights/no_such.safetensors"),  # a shipped name, resolved
    ],
)
def test_missing_weight_file(tmp_path, name, needle):
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('model = "test_vit"', f'model = "test_vit"\npretrained = "{name}"'))
    _one_line_error(pipeline(tmp_path, "extract", check=False), needle, "not found")


@pytest.mark.parametrize(
    "old, new, needle",
    [
        ('model = "test_resnet"', 'model = "no_such_net"', "unknown timm model 'no_such_net'"),
        ('model = "zoomshot-tiny-clip"', 'model = "ViT-Nope"', "unknown open_clip model 'ViT-Nope'"),
    ],
)
def test_unknown_model_name(tmp_path, old, new, needle):
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace(old, new))
    _one_line_error(pipeline(tmp_path, "extract", check=False), needle)


def test_missing_config_file_and_cache(tmp_path):
    _one_line_error(pipeline(tmp_path, "fit", "--config", "missing.toml", check=False), "missing.toml")
    write_config(tmp_path)
    _one_line_error(pipeline(tmp_path, "fit", check=False), "run `pipeline extract` first")


def test_cli_option_overrides_file_and_is_validated(tmp_path):
    write_config(tmp_path)
    proc = pipeline(tmp_path, "fit", "--dry-run", "--epochs", "7", "--variants", "mse", "--encoders", "cnn")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all("epochs=7" in ln and "cnn" in ln for ln in lines)  # 2 fractions
    _one_line_error(pipeline(tmp_path, "fit", "--dry-run", "--variants", "nope", check=False), "unknown fit variant")


def test_features_beyond_float16_stop_extraction_with_nothing_corrupt(tmp_path):
    """A timm model whose last block is scaled up 1e6 (real weights through its real loader): its
    features exceed float16's range, which became inf on disk. Now one line names the encoder and the
    split, and the resumable partial holds only the rows before the batch (none here)."""
    import h5py
    import numpy as np
    from safetensors.torch import save_file

    from zoomshot.extract.encoders import build_encoder

    cnn = build_encoder(
        {
            "family": "timm",
            "name": "cnn",
            "model": "test_resnet",
            "pretrained": "",
            "options": {"pretrained_cfg_overlay": {"input_size": [3, 64, 64], "crop_pct": 1.0}},
        },
        "cpu",
    )
    last = ("layer4.0.bn2.weight", "layer4.0.bn2.bias", "layer4.0.downsample.2.weight", "layer4.0.downsample.2.bias")
    weights = {
        k: v * 1e6 if k in last else v + 0.01 if v.is_floating_point() else v  # + 0.01: not the
        for k, v in cnn.model.state_dict().items()
    }  # seeded init
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "huge.safetensors"))
    cfg = write_config(tmp_path, train=32, test=16, batch=16)
    cfg.write_text(
        cfg.read_text().replace('model = "test_resnet"', 'model = "test_resnet"\npretrained = "huge.safetensors"')
    )
    _one_line_error(
        pipeline(tmp_path, "extract", "--no-progress", check=False),
        "encoder 'cnn' on shapes:",
        "beyond 65504, which the float16 cache cannot keep",
        "check the encoder",
    )
    features = tmp_path / "out/cache/features"
    assert not list(features.glob("*_cnn_*.h5"))
    for partial in features.glob("*_cnn_*.partial"):
        with h5py.File(partial) as f:
            assert np.isfinite(f["features"][: f.attrs["rows_done"]]).all()
