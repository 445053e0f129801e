"""Weights through the libraries' own loaders: open_clip local files and OpenAI TorchScript archives,
timm local files, true pooled widths."""

import pytest
import torch
from safetensors.torch import save_file

from zoomshot.cache.errors import PipelineError
from zoomshot.extract.encoders import build_encoder

CLIP = {"family": "open_clip", "name": "clip", "model": "zoomshot-tiny-clip", "pretrained": ""}
CNN = {
    "family": "timm",
    "name": "cnn",
    "model": "test_resnet",
    "pretrained": "",
    "options": {"pretrained_cfg_overlay": {"input_size": [3, 64, 64], "crop_pct": 1.0}},
}


class _Root(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_archive(state_dict: dict, path) -> None:
    """A TorchScript archive whose state dict is `state_dict`, like OpenAI's released CLIP files."""
    root = _Root()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, torch.nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))


def _differs(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return [k for k in sa if k in sb and not torch.equal(sa[k], sb[k])]


def test_openai_torchscript_archive_loads_with_open_clip_and_warns_without_quickgelu(tmp_path):
    source = build_encoder({**CLIP, "pretrained": ""}, "cpu")
    torch.manual_seed(1)
    for p in source.model.parameters():  # weights unlike the seeded random init, exact in float16 as OpenAI's
        p.data = p.data.normal_(0, 0.02).half().float()
    sd = {k: v for k, v in source.model.state_dict().items() if k != "attn_mask"}
    archive = tmp_path / "ViT-T-openai.pt"
    _torchscript_archive(sd, archive)
    with pytest.warns(UserWarning, match="quickgelu"):
        loaded = build_encoder({**CLIP, "pretrained": str(archive)}, "cpu")
    assert loaded.dim == 128 and _differs(source.model, loaded.model) == []
    assert loaded.preprocess["transform"].count("Normalize") == 1


def test_open_clip_and_timm_local_files(tmp_path):
    clip = build_encoder(CLIP, "cpu")
    for p in clip.model.parameters():
        p.data.add_(0.01)
    clip_file = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(clip_file))
    assert _differs(clip.model, build_encoder({**CLIP, "pretrained": str(clip_file)}, "cpu").model) == []

    cnn = build_encoder(CNN, "cpu")
    for p in cnn.model.parameters():
        p.data.add_(0.01)
    cnn_file = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in cnn.model.state_dict().items()}, str(cnn_file))
    reloaded = build_encoder({**CNN, "pretrained": str(cnn_file)}, "cpu")
    assert reloaded.dim == 96 and _differs(cnn.model, reloaded.model) == []
    assert reloaded.preprocess["input_size"] == (3, 64, 64)  # the overlay keeps the encoder's own size


def test_missing_file_and_unknown_names_are_pipeline_errors(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        build_encoder({**CNN, "pretrained": str(tmp_path / "none.safetensors")}, "cpu")
    with pytest.raises(PipelineError, match="unknown timm model"):
        build_encoder({**CNN, "model": "resnet_nope"}, "cpu")
    with pytest.raises(PipelineError, match="unknown encoder family"):
        build_encoder({**CNN, "family": "keras"}, "cpu")


def test_clip_from_a_local_dir_as_a_downloaded_checkpoint(tmp_path):
    """`pretrained = "local-dir:FOLDER"`: open_clip's own folder layout (open_clip_config.json with
    model_cfg and preprocess_cfg, and the weights), as a checkpoint downloaded from the hub has it."""
    import json
    import shutil

    from zoomshot.cache.keys import weights_fingerprint
    from zoomshot.extract.shipped import ASSETS, MODEL_CONFIGS

    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    model_cfg = json.loads((MODEL_CONFIGS / "zoomshot-tiny-clip.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    shutil.copy(ASSETS / "weights" / "tiny_clip.safetensors", folder / "open_clip_model.safetensors")
    from_dir = build_encoder({**CLIP, "model": "ViT-B-16", "pretrained": f"local-dir:{folder}"}, "cpu")
    from_file = build_encoder({**CLIP, "pretrained": str(ASSETS / "weights" / "tiny_clip.safetensors")}, "cpu")
    assert from_dir.dim == 128 and _differs(from_file.model, from_dir.model) == []
    assert repr(from_dir.transform) == repr(from_file.transform)
    with torch.inference_mode():
        prompts = ["a red triangle.", "a photo of a blue star."]
        torch.testing.assert_close(from_dir.encode_text(prompts, "cpu"), from_file.encode_text(prompts, "cpu"))
    before = weights_fingerprint(f"local-dir:{folder}")
    assert before.startswith("dir-sha256:")
    (folder / "open_clip_model.safetensors").unlink()  # no weights: open_clip would use random ones
    with pytest.raises(PipelineError, match="holds no weights file"):
        build_encoder({**CLIP, "pretrained": f"local-dir:{folder}"}, "cpu")
    assert weights_fingerprint(f"local-dir:{folder}") != before
    (folder / "open_clip_config.json").unlink()
    with pytest.raises(PipelineError, match="holds no open_clip_config.json"):
        build_encoder({**CLIP, "pretrained": f"local-dir:{folder}"}, "cpu")
