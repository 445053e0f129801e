"""Frozen encoders built by name: one factory, a registry of families (open_clip, timm).

Every encoder exposes its own eval preprocessing (from its pretrained config) and a pooled feature
vector; CLIP additionally encodes text. A missing weight file or an unknown model name is a
PipelineError with one line saying what to fix.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.keys import weights_location

MODEL_CONFIGS = Path(__file__).parent / "assets" / "model_configs"


@dataclass
class Encoder:
    name: str
    model: torch.nn.Module
    transform: Callable          # PIL image -> tensor (the encoder's own eval preprocessing)
    preprocess: dict             # that preprocessing, as JSON-able provenance
    dim: int
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    tokenizer: Callable | None = None

    def encode_text(self, prompts: list[str], device: str) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(device))


def _looks_like_file(pretrained: str) -> bool:
    return os.sep in pretrained or "/" in pretrained or pretrained.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _check_weights_file(pretrained: str, what: str) -> None:
    target = pretrained.removeprefix("local-dir:")
    if (pretrained.startswith("local-dir:") or _looks_like_file(pretrained)) and not Path(target).exists():
        raise PipelineError(f"weights for {what} not found at {target}: fix `pretrained` in the config "
                            f"(a tag, an existing file, or local-dir:FOLDER; empty = random weights)")


def _transform_provenance(transform) -> dict:
    return {"transform": repr(transform)}


def _is_torchscript(path: str) -> bool:
    """OpenAI's released CLIP files are TorchScript archives (a zip with compiled code)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _warn_quickgelu(model_name: str, pretrained: str, torchscript: bool) -> None:
    if (torchscript or "openai" in Path(pretrained).name.lower()) and "quickgelu" not in model_name.lower():
        warnings.warn(f"{pretrained} looks like OpenAI CLIP weights, which were trained with QuickGELU: "
                      f"use the model name '{model_name}-quickgelu' or the features will be wrong", stacklevel=3)


def _feature_dim(model: torch.nn.Module, encode: Callable, input_size: tuple, device: str) -> int:
    """The true pooled width, from one forward pass (MobileNetV3-small gives 1024, not num_features)."""
    with torch.inference_mode():
        return int(encode(torch.zeros(1, *input_size, device=device)).shape[-1])


def _build_open_clip(spec: dict, device: str) -> Encoder:
    import open_clip

    open_clip.add_model_config(MODEL_CONFIGS)
    model_name, pretrained = spec["model"], weights_location(spec.get("pretrained", ""))
    if model_name not in open_clip.list_models():
        raise PipelineError(f"unknown open_clip model {model_name!r}: see open_clip.list_models() "
                            f"or add a model config JSON")
    _check_weights_file(pretrained, f"CLIP {model_name!r}")
    torchscript = bool(pretrained) and Path(pretrained).is_file() and _is_torchscript(pretrained)
    if pretrained and Path(pretrained).is_file():
        _warn_quickgelu(model_name, pretrained, torchscript)
    try:
        if torchscript:   # open_clip's own loader rebuilds the model from the archive's state dict
            model = open_clip.load_openai_model(pretrained, precision="fp32", device=device)
            transform = open_clip.image_transform(model.visual.image_size, is_train=False,
                                                  mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)
        else:
            model, _, transform = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained or None, device=device)
    except RuntimeError as e:
        raise PipelineError(f"cannot load CLIP {model_name!r} with pretrained={pretrained!r}: "
                            f"{str(e).splitlines()[0]}") from None
    model.eval()
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    dim = _feature_dim(model, model.encode_image, (3, *size), device)
    return Encoder(spec["name"], model, transform, _transform_provenance(transform), dim,
                   model.encode_image, open_clip.get_tokenizer(model_name))


def _timm_kwargs(options: dict) -> dict:
    """TOML has no tuples; timm wants `input_size` and friends as tuples."""
    def fix(v):
        return tuple(v) if isinstance(v, list) else ({k: fix(x) for k, x in v.items()} if isinstance(v, dict) else v)
    return {k: fix(v) for k, v in options.items()}


def _build_timm(spec: dict, device: str) -> Encoder:
    import timm
    from timm.data import create_transform, resolve_model_data_config

    model_name, pretrained = spec["model"], weights_location(spec.get("pretrained", ""))
    if not timm.is_model(model_name):
        raise PipelineError(f"unknown timm model {model_name!r}: see timm.list_models()")
    _check_weights_file(pretrained, f"timm {model_name!r}")
    kwargs = _timm_kwargs(spec.get("options", {}))
    if pretrained and Path(pretrained).is_file():
        overlay = {**kwargs.pop("pretrained_cfg_overlay", {}), "file": pretrained}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    elif pretrained:  # a hub tag: "default" keeps timm's default tag for the architecture
        kwargs["pretrained"] = True
        if pretrained != "default":
            model_name = f"{model_name.split('.')[0]}.{pretrained}"
    try:
        model = timm.create_model(model_name, num_classes=0, **kwargs)
    except (RuntimeError, OSError, ValueError) as e:
        raise PipelineError(f"cannot build timm {model_name!r} with pretrained={pretrained!r}: "
                            f"{str(e).splitlines()[0]}") from None
    model.eval().to(device)
    data_cfg = resolve_model_data_config(model)
    transform = create_transform(**data_cfg, is_training=False)
    return Encoder(spec["name"], model, transform, {**data_cfg, **_transform_provenance(transform)},
                   _feature_dim(model, model, data_cfg["input_size"], device), model)


FAMILIES: dict[str, Callable[[dict, str], Encoder]] = {
    "open_clip": _build_open_clip,
    "timm": _build_timm,
}


def build_encoder(spec: dict, device: str = "cpu") -> Encoder:
    """One entry point: `spec` is an encoder identity from the config (family, name, model, ...)."""
    family = spec.get("family")
    if family not in FAMILIES:
        raise PipelineError(f"unknown encoder family {family!r} (known: {', '.join(FAMILIES)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)   # random-weight encoders are the same on every run (same cache key)
        return FAMILIES[family](spec, device)
