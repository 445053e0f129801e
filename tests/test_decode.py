"""The decode path: reduced-size JPEG decoding (PIL draft) at the scale each encoder's resize allows,
the tensor transforms the GPU path runs (here on the CPU, the same ops), GPU-path guards, and the
DataLoader defaults. How fast, and what draft does to top-1: benchmarks/decode_speed.py."""

import io
import json
import multiprocessing

import h5py
import numpy as np
import open_clip
import pytest
import torch
from helpers import CLIP, CNN, PATHS, inproc, run_main, write_config
from PIL import Image
from timm.data import create_transform

from zoomshot.extract.decode import DevicePixels, TensorTransform, decode_views, first_resize, uint8_chw
from zoomshot.extract.runner import loader_workers

TIMM = create_transform(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic", is_training=False)
OPEN_CLIP = open_clip.image_transform(224, is_train=False)


def jpeg(width, height, seed=0) -> bytes:
    small = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_each_view_gets_the_smallest_decode_its_own_resize_allows():
    data = jpeg(1000, 750)
    assert first_resize(TIMM) == (256, 256) and first_resize(OPEN_CLIP) == (224, 224)
    (one,), which = decode_views(opened(data), [(224, 224)])
    assert one.size == (500, 375) and which == [0]  # 750 // 224 = 3: scale 1/2, still >= 224
    decoded, which = decode_views(opened(data), [(224, 224), (64, 64), (224, 224)])
    assert [d.size for d in decoded] == [(500, 375), (125, 94)] and which == [0, 1, 0]
    # a view's pixels do not depend on the other views decoded with it
    assert np.array_equal(np.asarray(decoded[0]), np.asarray(one))
    assert decode_views(opened(data), [None])[0][0].size == (1000, 750)  # jpeg_draft off
    assert decode_views(opened(jpeg(300, 240)), [(224, 224)])[0][0].size == (300, 240)  # nothing to gain
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, "PNG")
    assert decode_views(Image.open(png), [(64, 64)])[0][0].size == (1000, 750)  # only JPEGs have draft


def test_draft_changes_an_encoders_input_by_little():
    data = jpeg(1000, 750)
    for t in (TIMM, OPEN_CLIP):
        full = t(opened(data).convert("RGB"))
        (small,), _ = decode_views(opened(data), [first_resize(t)])
        diff = (t(small) - full).abs()
        assert 0 < diff.mean() < 0.01 and diff.max() < 0.1  # normalized units (std ~ 1)


def test_tensor_transforms_match_the_pil_transforms():
    """The ops the GPU path runs, here on the CPU: same crop and normalization, resampling close."""
    image = opened(jpeg(500, 375)).convert("RGB")
    for t in (TIMM, OPEN_CLIP):
        out = TensorTransform(t, "cpu")([uint8_chw(image)])[0]
        ref = t(image)
        assert out.shape == ref.shape and (out - ref).abs().mean() < 1e-3 and (out - ref).abs().max() < 0.05


def test_device_pixels_decode_jpegs_and_keep_bad_ones_apart():
    """DevicePixels on the CPU device: torchvision's decode_jpeg (the same call that runs with
    device='cuda'), each view's tensor transform, a corrupt JPEG reported as a bad item."""
    good, broken = jpeg(500, 375), jpeg(500, 375, seed=1)[:300]
    items = [([torch.frombuffer(bytearray(d), dtype=torch.uint8)], [0, 0]) for d in (good, broken)]
    items.append(([uint8_chw(opened(good).convert("RGB"))], [0, 0]))  # a decoded (non-JPEG) item
    views, index, labels, bad = DevicePixels([TIMM, OPEN_CLIP], "cpu")(
        items, np.array([5, 6, 7]), np.array([0, 1, 2]), []
    )
    assert index.tolist() == [5, 7] and labels.tolist() == [0, 2] and [b[0] for b in bad] == [6]
    assert views[0].shape == (2, 3, 224, 224)
    ref = OPEN_CLIP(opened(good).convert("RGB"))
    assert (views[1][0] - ref).abs().mean() < 0.02  # libjpeg-turbo through torchvision vs PIL
    assert torch.equal(views[1][0], views[1][1])  # bytes decoded here == decoded in a worker


def test_device_pixels_leave_jpeg_bytes_on_the_cpu_for_another_device():
    """gpu_decode on a stand-in device ('meta', as 'cuda' without one): decode_jpeg reads the bytes from
    the CPU and decodes for `device`; the bytes moved there first raised a ValueError nothing caught."""
    good, broken = jpeg(500, 375), jpeg(500, 375, seed=1)[:300]
    items = [([torch.frombuffer(bytearray(d), dtype=torch.uint8)], [0, 0]) for d in (good, broken)]
    items.append(([uint8_chw(opened(good).convert("RGB"))], [0, 0]))
    views, index, labels, bad = DevicePixels([TIMM, OPEN_CLIP], "meta")(
        items, np.array([5, 6, 7]), np.array([0, 1, 2]), []
    )
    assert index.tolist() == [5, 7] and [b[0] for b in bad] == [6] and "cannot decode JPEG on meta" in bad[0][1]
    assert [(v.shape, v.device.type) for v in views] == [((2, 3, 224, 224), "meta")] * 2


def test_unknown_transforms_are_refused_by_the_tensor_path():
    from torchvision import transforms as T

    from zoomshot.cache.errors import PipelineError

    with pytest.raises(PipelineError, match="gpu_preprocess cannot run the step ColorJitter"):
        TensorTransform(T.Compose([T.Resize(64), T.ColorJitter(), T.ToTensor()]), "cpu")


def _in_daemon(queue):
    queue.put(loader_workers(-1))


def test_loader_workers_follow_the_cores_and_stay_out_of_daemons():
    import os

    assert loader_workers(-1) == max(0, len(os.sched_getaffinity(0)) - 1) and loader_workers(3) == 3
    queue = multiprocessing.get_context("fork").Queue()
    p = multiprocessing.get_context("fork").Process(target=_in_daemon, args=(queue,), daemon=True)
    p.start()
    assert queue.get(timeout=60) == 0  # a dask worker process may not start DataLoader workers
    p.join()


FOLDER = (
    PATHS
    + CLIP
    + CNN
    + """
[[datasets]]
name = "big"
kind = "imagefolder"
root = "imgs"

[extract]
splits = ["big:train"]
batch_size = 4
device = "cpu"
jpeg_draft = {draft}
gpu_preprocess = {gpu}
"""
)


def test_draft_on_and_off_are_different_files_with_their_provenance(tmp_path):
    """... and export-wds, which writes full-size decodes, says when the features came from drafted ones."""
    for i in range(6):
        path = tmp_path / "imgs/train" / f"class{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(512, 384, seed=i))
    feats, said = {}, {}
    for draft in ("true", "false"):
        write_config(tmp_path, FOLDER, draft=draft, gpu="false", templates="openai-imagenet")
        inproc(tmp_path, "extract", "--no-progress")
        said[draft] = inproc(tmp_path, "export-wds", "big:train", "--out", f"wds-{draft}", "--no-progress").stdout
    assert "6 of 6 images are JPEGs that extraction decoded at reduced size" in said["true"]
    assert "reduced size" not in said["false"] and "6 images of big:train" in said["false"]
    files = sorted((tmp_path / "out/cache/features").glob("big_train_cnn_*.h5"))
    assert len(files) == 2
    for p in files:
        with h5py.File(p) as f:
            pre = json.loads(f.attrs["preprocess"])
            feats[bool(pre["pixels"])] = f["features"][:].astype(np.float32)
            assert pre["jpeg_draft_size"] == ([64, 64] if pre["pixels"] else None)
    cos = (
        (feats[True] * feats[False]).sum(1) / np.linalg.norm(feats[True], axis=1) / np.linalg.norm(feats[False], axis=1)
    )
    assert not np.array_equal(feats[True], feats[False]) and cos.min() > 0.98
    write_config(tmp_path, FOLDER, draft="true", gpu="true", templates="openai-imagenet")
    code, _, err = run_main(tmp_path, "extract", "--no-progress")
    assert code == 2 and "gpu_preprocess / gpu_decode need a CUDA device" in err and "Traceback" not in err
