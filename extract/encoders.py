"""Frozen encoders built by name: one factory, a registry of families (open_clip, timm).

Every encoder exposes its own eval preprocessing (from its pretrained config) and a pooled feature
vector; CLIP additionally encodes text. A missing weight file or an unknown model name is a
PipelineError with one line saying what to fix.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from zoomshot.cache.errors import PipelineError

from .shipped import LOCAL_DIR, MODEL_CONFIGS, missing_weights


@dataclass
class Encoder:
    name: str
    model: torch.nn.Module
    transform: Callable  # PIL image -> tensor (the encoder's own eval preprocessing)
    preprocess: dict  # that preprocessing, as JSON-able provenance
    dim: int
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    tokenizer: Callable | None = None

    def encode_text(self, prompts: list[str], device: str) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(device))


def _check_weights_file(pretrained: str, what: str) -> None:
    if (target := missing_weights(pretrained)) is not None:
        raise PipelineError(
            f"weights for {what} not found at {target}: fix `pretrained` in the config "
            f"(a tag, an existing file, or local-dir:FOLDER; empty = random weights)"
        )


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
        warnings.warn(
            f"{pretrained} looks like OpenAI CLIP weights, which were trained with QuickGELU: "
            f"use the model name '{model_name}-quickgelu' or the features will be wrong",
            stacklevel=3,
        )


def _feature_dim(model: torch.nn.Module, encode: Callable, input_size: tuple, device: str) -> int:
    """The true pooled width, from one forward pass (MobileNetV3-small gives 1024, not num_features)."""
    with torch.inference_mode():
        return int(encode(torch.zeros(1, *input_size, device=device)).shape[-1])


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _local_dir(folder: str) -> str:
    """open_clip reads `local-dir:FOLDER` from the model name (config and weights from the folder)."""
    path = Path(folder)
    if not (path / "open_clip_config.json").is_file():
        raise PipelineError(
            f"local-dir:{folder} holds no open_clip_config.json: put the checkpoint's "
            f"open_clip_config.json and weights (e.g. open_clip_model.safetensors) there"
        )
    if not any(any(path.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pth")):
        raise PipelineError(
            f"local-dir:{folder} holds no weights file (.safetensors, .bin or .pth): open_clip "
            f"would build the model with random weights"
        )
    return f"{LOCAL_DIR}{folder}"


def _build_open_clip(spec: dict, device: str) -> Encoder:
    import open_clip

    open_clip.add_model_config(MODEL_CONFIGS)
    model_name, pretrained = spec["model"], spec.get("pretrained", "")
    _check_weights_file(pretrained, f"CLIP {model_name!r}")
    if pretrained.startswith(LOCAL_DIR):
        model_name, pretrained = _local_dir(pretrained.removeprefix(LOCAL_DIR)), ""
    elif model_name not in open_clip.list_models():
        raise PipelineError(
            f"unknown open_clip model {model_name!r}: see open_clip.list_models() or add a model config JSON"
        )
    torchscript = bool(pretrained) and Path(pretrained).is_file() and _is_torchscript(pretrained)
    if pretrained and Path(pretrained).is_file():
        _warn_quickgelu(model_name, pretrained, torchscript)
    try:
        if torchscript:  # open_clip's own loader rebuilds the model from the archive's state dict
            model = open_clip.load_openai_model(pretrained, precision="fp32", device=device)
            transform = open_clip.image_transform(
                model.visual.image_size,
                is_train=False,
                mean=open_clip.OPENAI_DATASET_MEAN,
                std=open_clip.OPENAI_DATASET_STD,
            )
        else:
            model, _, transform = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained or None, device=device
            )
    except Exception as e:  # open_clip, torch and safetensors each raise their own types for bad weights
        raise PipelineError(
            f"cannot load CLIP {spec['model']!r} with pretrained={spec.get('pretrained')!r}: {_first_line(e)}"
        ) from None
    model.eval()
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    dim = _feature_dim(model, model.encode_image, (3, *size), device)
    return Encoder(
        spec["name"],
        model,
        transform,
        _transform_provenance(transform),
        dim,
        model.encode_image,
        open_clip.get_tokenizer(model_name),
    )


def _timm_kwargs(options: dict) -> dict:
    """TOML has no tuples; timm wants `input_size` and friends as tuples."""

    def fix(v):
        return tuple(v) if isinstance(v, list) else ({k: fix(x) for k, x in v.items()} if isinstance(v, dict) else v)

    return {k: fix(v) for k, v in options.items()}


def _not_loaded(model: torch.nn.Module, reference: torch.nn.Module) -> list[str]:
    """Randomly initialised tensors that still hold their initial values after loading a weights file:
    timm drops mismatched keys of a checkpoint silently when the classifier is removed."""
    ref = reference.state_dict()
    return [
        k
        for k, v in model.state_dict().items()
        if k in ref
        and v.is_floating_point()
        and v.numel() > 1
        and bool(ref[k].std() > 0)
        and torch.equal(v.cpu(), ref[k].cpu())
    ]


def _build_timm(spec: dict, device: str) -> Encoder:
    import timm
    from timm.data import create_transform, resolve_model_data_config

    model_name, pretrained = spec["model"], spec.get("pretrained", "")
    if not timm.is_model(model_name):
        raise PipelineError(f"unknown timm model {model_name!r}: see timm.list_models()")
    _check_weights_file(pretrained, f"timm {model_name!r}")
    kwargs = _timm_kwargs(spec.get("options", {}))
    from_file = bool(pretrained) and Path(pretrained).is_file()
    if from_file:
        overlay = {**kwargs.pop("pretrained_cfg_overlay", {}), "file": pretrained}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    elif pretrained:  # a hub tag: "default" keeps timm's default tag for the architecture
        kwargs["pretrained"] = True
        if pretrained != "default":
            model_name = f"{model_name.split('.')[0]}.{pretrained}"
    try:
        with torch.random.fork_rng(devices=[]):
            model = timm.create_model(model_name, num_classes=0, **kwargs)
        if from_file:
            reference = timm.create_model(model_name, num_classes=0, **{**kwargs, "pretrained": False})
            if missed := _not_loaded(model, reference):
                raise PipelineError(
                    f"weights file {pretrained} does not fit timm model {model_name!r}: {len(missed)} "
                    f"of its tensors were not loaded (e.g. {missed[0]!r}); is it another "
                    f"architecture's file?"
                )
    except PipelineError:
        raise
    except Exception as e:  # timm, torch and safetensors each raise their own types for bad weights
        raise PipelineError(
            f"cannot build timm {model_name!r} with pretrained={pretrained!r}: {_first_line(e)}"
        ) from None
    model.eval().to(device)
    data_cfg = resolve_model_data_config(model)
    transform = create_transform(**data_cfg, is_training=False)
    return Encoder(
        spec["name"],
        model,
        transform,
        {**data_cfg, **_transform_provenance(transform)},
        _feature_dim(model, model, data_cfg["input_size"], device),
        model,
    )


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
        torch.manual_seed(0)  # random-weight encoders are the same on every run (same cache key)
        return FAMILIES[family](spec, device)
