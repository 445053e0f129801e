"""An exported model loaded the way open_clip loads one: `load_model(DIR) -> (model, preprocess, tokenizer)`.

`model.encode_image(x)` is h(V_s(x)), the frozen encoder's features mapped into CLIP's space (or CLIP's
own image features for an export of CLIP itself), `model.encode_text(tokens)` is CLIP's text tower, and
`model.logit_scale` is CLIP's, so code written for an open_clip model (`build_zero_shot_classifier`,
CLIP_benchmark) runs on it unchanged. One loader builds CLIP and every run, so a comparison script has
one code path.

What is read is checked before it is used: the manifest's format, the maps file's sha256, every weights
file (or folder) against the checksum the run was fitted with, the encoder and CLIP identities against
their content keys, and the rebuilt preprocessing against the recorded one. A missing, damaged or
mismatched export is one `PipelineError` line that says what to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from zoomshot.cache import keys
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.runs import Maps
from zoomshot.extract import shipped
from zoomshot.extract.encoders import Encoder, build_encoder

MANIFEST = "zoomshot_model.json"
FORMAT = "zoomshot-model/1"
MAPS_FILE = "maps.safetensors"
#: how an export names its weights: a file or folder copied into it, a shipped asset, a hub tag, none
SOURCES = ("file", "dir", "asset", "tag", "random")


class ZoomshotCLIP(torch.nn.Module):
    """A CLIP-like model: the mapped encoder (or CLIP's image tower) beside CLIP's text tower."""

    def __init__(
        self,
        clip: torch.nn.Module,
        encoder: torch.nn.Module | None = None,
        maps: Maps | None = None,
        info: dict | None = None,
    ):
        super().__init__()
        self.mapped = maps is not None
        if self.mapped:
            clip.visual = torch.nn.Identity()  # CLIP's image tower is no part of a mapped model
            self.visual = encoder
            for name in ("h_weight", "h_bias", "hinv_weight", "hinv_bias"):
                self.register_buffer(name, getattr(maps, name).float().clone())
            self.scales = (maps.scale_source, maps.scale_clip)
        else:
            self.visual = clip.visual
        self.clip = clip
        self.logit_scale = clip.logit_scale
        self.logit_bias = getattr(clip, "logit_bias", None)
        self.info = info or {}

    @property
    def maps(self) -> Maps:
        """h and h_inv on the model's device (`Maps.to_clip` applies h in raw feature units)."""
        return Maps(self.h_weight, self.h_bias, self.hinv_weight, self.hinv_bias, *self.scales)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.maps.to_clip(self.visual(image)) if self.mapped else self.clip.encode_image(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(text, normalize=normalize)

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image logits, text logits), as open_clip's `CLIP.get_logits`."""
        image_features, text_features, scale = self(image, text)
        logits = scale * image_features @ text_features.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """Normalised image and text features and exp(logit_scale), as open_clip's `CLIP.forward`."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()


def _bad(folder: Path, what: str) -> PipelineError:
    return PipelineError(f"export {folder}: {what}: export the run again (`pipeline export RUN --out DIR`)")


def read_manifest(folder: str | Path) -> dict:
    """The checked manifest of an export folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"no export folder at {folder}: give the --out folder of `pipeline export`")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        hint = (
            f"a run folder: export it first (`pipeline export {folder.name}`)"
            if (folder / "run.json").is_file()
            else "not an export of `pipeline export`"
        )
        raise PipelineError(f"{folder} holds no {MANIFEST}: it is {hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(folder, f"{MANIFEST} is damaged ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise _bad(folder, f"{MANIFEST} has format {found!r}, this version reads {FORMAT!r}")
    need = ["clip"] + (["encoder", "maps"] if manifest.get("kind") == "mapped" else [])
    if manifest.get("kind") not in ("mapped", "clip") or any(not isinstance(manifest.get(k), dict) for k in need):
        raise _bad(folder, f"{MANIFEST} lacks its kind or its {', '.join(need)} entries")
    return manifest


def weights_location(folder: Path, weights: dict) -> str:
    """What `pretrained` the encoder factory gets for a manifest's weights entry."""
    source, ref = weights["source"], weights["ref"]
    if source not in SOURCES:
        raise _bad(folder, f"unknown weights source {source!r}")
    if source == "file":
        return str(folder / ref)
    if source == "dir":
        return keys.LOCAL_DIR + str(folder / ref)
    return shipped.resolve(ref) if source == "asset" else ref


def model_spec(folder: Path, entry: dict, role: str) -> dict:
    """The factory spec of the export's CLIP or encoder, after checking its weights by content and its
    identity against the content key the run was fitted with."""
    try:
        identity, location = entry["identity"], weights_location(folder, entry["weights"])
        name, key, ref = entry["name"], entry["key"], entry["weights"]["ref"]
    except (KeyError, TypeError, AttributeError):
        raise _bad(folder, f"the {role} entry of {MANIFEST} is incomplete") from None
    if shipped.missing_weights(location) is not None:
        raise _bad(folder, f"the {role} weights {ref} are missing")
    if keys.weights_fingerprint(location) != identity.get("weights"):
        raise _bad(folder, f"the {role} weights {ref} do not match their recorded checksum (changed or damaged)")
    if keys.digest(identity) != key:
        raise _bad(folder, f"the {role} identity does not match its content key {key}")
    return {
        "family": identity["family"],
        "name": name,
        "model": identity["model"],
        "pretrained": location,
        "options": identity.get("options", {}),
    }


@dataclass
class Assembled:
    model: ZoomshotCLIP
    preprocess: Callable
    tokenizer: Callable
    towers: dict[str, Encoder]  # "clip" and, for a mapped export, "encoder": as the factory built them


def read_maps(folder: Path, entry: dict) -> Maps:
    """The export's maps, after checking the file against its recorded sha256."""
    path = folder / entry.get("file", MAPS_FILE)
    if not path.is_file():
        raise _bad(folder, f"{path.name} is missing")
    if keys.file_sha256(path) != entry.get("sha256"):
        raise _bad(folder, f"{path.name} does not match its recorded sha256 (changed or damaged)")
    try:
        return Maps.load(path)
    except Exception as e:  # safetensors raises its own error types for a torn file
        raise _bad(folder, f"cannot read {path.name} ({e})") from None


def assemble(folder: Path, manifest: dict, device: str = "cpu") -> Assembled:
    """Build the model an export describes, after checking its weights, identities and maps."""
    specs = {"clip": model_spec(folder, manifest["clip"], "CLIP")}
    if manifest["kind"] == "mapped":
        specs["encoder"] = model_spec(folder, manifest["encoder"], "encoder")
        maps = read_maps(folder, manifest["maps"])
    towers = {role: build_encoder(spec, device) for role, spec in specs.items()}
    clip = towers["clip"]
    if manifest["kind"] == "clip":
        return Assembled(ZoomshotCLIP(clip.model, info=manifest).eval(), clip.transform, clip.tokenizer, towers)
    encoder = towers["encoder"]
    if (encoder.dim, clip.dim) != (maps.source_dim, maps.clip_dim):
        raise _bad(
            folder,
            f"the maps take {maps.source_dim} -> {maps.clip_dim} features, the models give "
            f"{encoder.dim} and {clip.dim}",
        )
    model = ZoomshotCLIP(clip.model, encoder.model, maps.to(device), manifest).eval()
    return Assembled(model, encoder.transform, clip.tokenizer, towers)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ZoomshotCLIP, Callable, Callable]:
    """`(model, preprocess, tokenizer)` of an export folder, like `open_clip.create_model_and_transforms`
    (its eval transform) and `open_clip.get_tokenizer`. The model is in eval mode on `device`."""
    folder = Path(path)
    manifest = read_manifest(folder)
    built = assemble(folder, manifest, str(device))
    for role, tower in built.towers.items():
        recorded = manifest[role].get("preprocess")
        if recorded != json.loads(json.dumps(tower.preprocess, default=str)):
            raise _bad(
                folder,
                f"the {role}'s preprocessing differs from the recorded one (another timm or "
                f"open_clip version?); recorded {recorded}",
            )
    return built.model, built.preprocess, built.tokenizer
