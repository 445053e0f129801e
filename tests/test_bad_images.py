"""Every image of an ImageFolder is either decoded as the encoders' own preprocessing would, or counted,
named and listed as bad: never silently wrong (issue 24)."""

import io
import struct
import zlib

import h5py
import numpy as np
from helpers import CLIP, PATHS, pipeline, run_main, write_config
from PIL import Image

CONFIG = (
    PATHS
    + CLIP
    + """
[[datasets]]
name = "data"
kind = "imagefolder"
root = "imgs"
options = {options}

[extract]
splits = ["data:train"]
batch_size = 8
device = "cpu"
"""
)


def _picture(seed):
    """A smooth 64 x 64 RGB picture (8 x 8 blocks): JPEG keeps it close."""
    blocks = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((64, 64), Image.NEAREST)


def _bomb(path):
    """A valid PNG whose header claims 30,000 x 30,000 pixels (PIL refuses it as a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", 30000, 30000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the chunk's CRC
    path.write_bytes(bytes(data))


def _world(root):
    """`bad/` holds four bad files (sorted names), `twins/` pairs of the same picture in two encodings."""
    bad, twins = root / "train" / "bad", root / "train" / "twins"
    bad.mkdir(parents=True)
    twins.mkdir()
    _picture(0).save(bad / "a_good.jpg")
    _bomb(bad / "b_bomb.png")
    (bad / "c_empty.jpg").write_bytes(b"")
    (bad / "d_text.jpg").write_text("not an image\n")
    _picture(1).save(bad / "e_truncated.jpg")
    (bad / "e_truncated.jpg").write_bytes((bad / "e_truncated.jpg").read_bytes()[:300])
    gray = _picture(2).convert("L")
    gray.save(twins / "gray8.png")
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(twins / "gray16.png")  # 16-bit, same picture
    rgb = _picture(3)
    rgb.save(twins / "rgb.png")
    palette = rgb.quantize(colors=256)  # at most 64 colours: an exact palette
    palette.save(twins / "rgb_palette.png")
    palette.save(twins / "rgb_palette_transparent.png", transparency=0)
    rgb.save(twins / "rgb_q95.jpg", quality=95)
    rgb.convert("CMYK").save(twins / "rgb_q95_cmyk.jpg", quality=95)
    return ["bad/b_bomb.png", "bad/c_empty.jpg", "bad/d_text.jpg", "bad/e_truncated.jpg"]


def _clip_rows(folder):
    (path,) = (folder / "out/cache/features").glob("data_train_clip_*.h5")
    with h5py.File(path) as f:
        return path, dict(zip(f["index"][:].tolist(), f["features"][:].astype(np.float32)))


def test_bad_files_are_counted_named_and_listed_and_twins_agree(tmp_path):
    bad = _world(tmp_path / "imgs")
    write_config(tmp_path, CONFIG, options="{}")
    proc = pipeline(tmp_path, "extract", "--no-progress")
    line = next(ln for ln in proc.stdout.splitlines() if "unreadable" in ln)
    assert line.startswith("data:train: skipped 4 unreadable image(s) for every encoder: ")
    assert all(f"imgs/train/{b}" in line for b in bad[:3]) and bad[3] not in line and ", ..." in line
    path, rows = _clip_rows(tmp_path)
    listed = path.with_name(path.name + ".bad.txt").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in listed] == ["1", "2", "3", "4"] and str(
        path.with_name(path.name + ".bad.txt")
    ) in line
    assert [ln.split("\t")[1] for ln in listed] == [f"imgs/train/{b}" for b in bad]
    assert "DecompressionBombError" in listed[0]
    assert sorted(rows) == [0, *range(5, 12)]
    names = ["gray16", "gray8", "rgb", "rgb_palette", "rgb_palette_transparent", "rgb_q95", "rgb_q95_cmyk"]
    feats = {n: rows[5 + i] / np.linalg.norm(rows[5 + i]) for i, n in enumerate(names)}
    for a, b in [
        ("gray16", "gray8"),
        ("rgb_palette", "rgb"),
        ("rgb_palette_transparent", "rgb"),
        ("rgb_q95_cmyk", "rgb_q95"),
    ]:
        assert float(feats[a] @ feats[b]) > 0.99, (a, b, float(feats[a] @ feats[b]))


def test_fail_mode_names_the_file(tmp_path):
    (tmp_path / "imgs/train/c").mkdir(parents=True)
    _picture(0).save(tmp_path / "imgs/train/c/a.jpg")
    _bomb(tmp_path / "imgs/train/c/b.png")
    write_config(tmp_path, CONFIG, options="{}")
    proc = pipeline(tmp_path, "extract", "--no-progress", "--on-bad-image", "fail", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "unreadable image imgs/train/c/b.png in data:train: DecompressionBombError" in proc.stderr


def test_duplicate_class_names_are_refused(tmp_path):
    for c in ("a", "b", "c"):
        (tmp_path / "imgs/train" / c).mkdir(parents=True)
        _picture(0).save(tmp_path / "imgs/train" / c / "x.jpg")
    (tmp_path / "names.txt").write_text("cat\ndog\ncat\n")
    write_config(tmp_path, CONFIG, options='{ classnames_file = "names.txt" }')
    code, out, err = run_main(tmp_path, "extract", "--no-progress")
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "classnames_file names.txt name 'cat' for classes [0, 2]" in err
