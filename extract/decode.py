"""From encoded image to the tensors each encoder wants, doing no more work than the sizes need.

* Reduced-size JPEG decoding (`[extract] jpeg_draft`): libjpeg scales by 1/2, 1/4 or 1/8 inside the
  IDCT (PIL's `Image.draft`), far cheaper than decoding every pixel and resizing them away. The scale is
  the largest that leaves the image at least as large as the encoder's first resize asks, so the
  resize that follows still only shrinks; it depends on that encoder's transform alone. It changes
  pixels a little, so it is part of a feature file's key; top-1 on the world with and without it:
  docs/scale.md.
* On CUDA, optionally (`gpu_preprocess`): workers only decode, the uint8 images go to the GPU (4x
  fewer bytes than float) and each encoder's resize, crop and normalize run there (`DevicePixels`),
  from the same torchvision transform parsed into tensor ops; `gpu_decode` also decodes JPEGs there
  (`torchvision.io.decode_jpeg(device="cuda")`, nvJPEG). Both change pixels slightly (other resampling
  and IDCT code), so both are part of the key. The tensor ops run on any device; tests run them on the CPU.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from zoomshot.cache.errors import PipelineError

JPEG_MAGIC = b"\xff\xd8"


def first_resize(transform) -> tuple[int, int] | None:
    """(width, height) the transform's first step needs at least, or None where it cannot tell."""
    steps = getattr(transform, "transforms", [transform])
    resize = steps[0] if steps else None
    if not isinstance(resize, T.Resize) or resize.max_size is not None:
        return None
    size = resize.size
    if isinstance(size, int) or len(size) == 1:  # shorter side to S: both sides must stay >= S
        s = size if isinstance(size, int) else size[0]
        return s, s
    return size[1], size[0]


def draft_scale(image_size: tuple[int, int], size: tuple[int, int] | None) -> int:
    """The 1/2^k scale PIL's JPEG `draft` picks for `size` (its own rule): the largest of 8, 4, 2, 1
    that leaves both sides >= `size`."""
    if size is None:
        return 1
    fits = min(image_size[0] // size[0], image_size[1] // size[1])
    return next((s for s in (8, 4, 2) if fits >= s), 1)


#: PIL modes of 16-bit samples (PNG's 16-bit grayscale opens as one of them): `convert` clips them at 255,
#: so nearly every pixel would turn white
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as the encoders' own preprocessing sees it: `convert("RGB")`, as open_clip's and timm's
    transforms and torchvision's ImageFolder loader do (a palette is looked up, alpha dropped, CMYK
    converted; EXIF orientation is not applied, as there). 16-bit samples are first scaled to 8 bits
    (v / 257, rounded: the exact inverse of writing an 8-bit image as 16-bit), which `convert` does not do."""
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"{image.mode} pixels outside the 16-bit range ({values.min()}..{values.max()})")
        image = Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")
    return image.convert("RGB")


def decode_views(image: Image.Image, sizes: list[tuple[int, int] | None]) -> tuple[list[Image.Image], list[int]]:
    """The RGB decodes the views need and, per view, which one it uses. A JPEG is decoded at the scale
    each view's own size allows (so a view's pixels never depend on which other encoders run); views
    that share a scale share one decode, which is nearly always all of them."""
    scales = [draft_scale(image.size, s) for s in sizes] if image.format == "JPEG" else [1] * len(sizes)
    distinct = sorted(set(scales))
    data = encoded_jpeg(image) if len(distinct) > 1 else None
    decoded = []
    for k, scale in enumerate(distinct):
        im = image if k == 0 else Image.open(io.BytesIO(data))
        if scale > 1:
            im.draft(None, sizes[scales.index(scale)])
        decoded.append(to_rgb(im))
    return decoded, [distinct.index(s) for s in scales]


def encoded_jpeg(image: Image.Image) -> bytes | None:
    """The bytes of a lazily opened, not yet decoded JPEG (to decode on the GPU); None otherwise."""
    if image.format != "JPEG" or getattr(image, "fp", None) is None:
        return None
    image.fp.seek(0)
    data = image.fp.read()
    return data if data.startswith(JPEG_MAGIC) else None


def uint8_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class TensorTransform:
    """An encoder's torchvision eval transform (Resize, CenterCrop, to-tensor, Normalize) as tensor ops
    on a uint8 (3, H, W) image on any device."""

    KNOWN_NOOPS = ("MaybeConvertMode", "_convert_to_rgb", "MaybeToTensor", "ToTensor")

    def __init__(self, transform, device: str):
        self.steps = []
        for step in getattr(transform, "transforms", [transform]):
            name = getattr(step, "__name__", type(step).__name__)
            if isinstance(step, T.Resize):
                self.steps.append(lambda x, s=step: F.resize(x, s.size, s.interpolation, s.max_size, antialias=True))
            elif isinstance(step, T.CenterCrop):
                self.steps.append(lambda x, s=step: F.center_crop(x, s.size))
            elif isinstance(step, T.Normalize):
                self.mean = torch.as_tensor(step.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
                self.std = torch.as_tensor(step.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            elif name not in self.KNOWN_NOOPS:
                raise PipelineError(
                    f"gpu_preprocess cannot run the step {name} of {transform!r} on the GPU: set "
                    f"[extract] gpu_preprocess = false"
                )
        if not hasattr(self, "mean"):
            raise PipelineError(f"gpu_preprocess needs a Normalize step in {transform!r}: set gpu_preprocess = false")

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for x in images:
            for step in self.steps:
                x = step(x)
            out.append(x)
        return (torch.stack(out).float().div_(255) - self.mean) / self.std


class DevicePixels:
    """Finishes a batch on `device`. Each item is (images, which): its uint8 decodes (or a JPEG's bytes,
    decoded here with `gpu_decode`) and the one each view uses; every view's tensor transform then runs
    on the device. An image the device cannot decode becomes a bad item, like on the CPU."""

    def __init__(self, transforms: list, device: str):
        self.device = device
        self.views = [TensorTransform(t, device) for t in transforms]

    def _jpegs(self, data: list[torch.Tensor]) -> list[torch.Tensor | str]:
        """Decodes on the device from bytes on the CPU (where decode_jpeg wants them, whatever `device`)."""
        import torchvision.io as tio

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 flags its codecs deprecated
            try:
                decoded = tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=self.device)
                return [x.to(self.device) for x in decoded]  # only CUDA decodes on the device itself
            except (RuntimeError, ValueError):  # one bad file fails the batch: decode one by one to find it
                out = []
                for x in data:
                    try:
                        out.append(tio.decode_jpeg(x, mode=tio.ImageReadMode.RGB, device=self.device).to(self.device))
                    except (RuntimeError, ValueError) as e:
                        out.append(f"cannot decode JPEG on {self.device}: {str(e).splitlines()[0]}")
                return out

    def __call__(self, items: list, index: np.ndarray, labels: np.ndarray, bad: list):
        """(views on the device, index, labels, bad) of the images that decoded."""
        encoded = [i for i, (decodes, _) in enumerate(items) if decodes[0].dim() == 1]
        images = [
            decodes if decodes[0].dim() == 1 else [x.to(self.device, non_blocking=True) for x in decodes]
            for decodes, _ in items
        ]  # JPEG bytes stay on the CPU, where decode_jpeg reads them
        for i, x in zip(encoded, self._jpegs([images[i][0] for i in encoded]) if encoded else []):
            images[i] = [x]
        ok = [i for i, x in enumerate(images) if not isinstance(x[0], str)]
        bad = sorted(bad + [(int(index[i]), images[i][0]) for i in range(len(images)) if i not in ok])
        views = [view([images[i][items[i][1][v]] for i in ok]) for v, view in enumerate(self.views)] if ok else []
        return views, index[ok], labels[ok], bad
