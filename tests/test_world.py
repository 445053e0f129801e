"""The procedural shapes world (extract/world.py) and its prompt assets."""

import json
import pickle
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.layout import read_prompt_file
from zoomshot.extract import shipped
from zoomshot.extract import world as W
from zoomshot.extract.world import (
    BACKGROUNDS,
    CLASSNAMES,
    COLOURS,
    HELD_OUT,
    SHAPES,
    SIZES,
    ShapesWorld,
    is_held_out,
)


def classfree_prompts(path=shipped.CLASSFREE_PROMPTS):
    return read_prompt_file(path)


def _bytes(img: Image.Image) -> bytes:
    return img.tobytes()


# --- constants -------------------------------------------------------------------------------------
def test_factor_constants():
    assert len(SHAPES) == 8 and len(set(SHAPES)) == 8
    assert len(COLOURS) == 8 and len(set(COLOURS)) == 8
    assert list(SIZES) == ["small", "large"]
    assert len(BACKGROUNDS) == 3 and len(set(BACKGROUNDS)) == 3
    # No factor word is shared between factors, so captions can be parsed back unambiguously.
    words = list(SHAPES) + list(COLOURS) + list(SIZES) + list(BACKGROUNDS)
    assert len(words) == len(set(words))


def test_classnames_readable_and_unique():
    assert len(CLASSNAMES) == 64 and len(set(CLASSNAMES)) == 64
    for label, name in enumerate(CLASSNAMES):
        colour, shape = name.split(" ")
        assert colour in COLOURS and shape in SHAPES
        assert W.class_label(colour, shape) == label
        assert W.class_factors(label) == (COLOURS.index(colour), SHAPES.index(shape))
    ds = ShapesWorld(size=1)
    assert ds.classes == list(CLASSNAMES)
    assert "red triangle" in ds.classes


def test_held_out_list():
    assert len(HELD_OUT) == 10 and len(set(HELD_OUT)) == 10
    assert all(name in CLASSNAMES for name in HELD_OUT)
    assert sorted(W.HELD_OUT_LABELS) == sorted(CLASSNAMES.index(n) for n in HELD_OUT)
    # every colour and shape keeps training partners
    kept = [n for n in CLASSNAMES if n not in HELD_OUT]
    assert {n.split()[0] for n in kept} == set(COLOURS)
    assert {n.split()[1] for n in kept} == set(SHAPES)


def test_is_held_out_recognises_all_forms():
    for label, name in enumerate(CLASSNAMES):
        expected = name in HELD_OUT
        colour, shape = name.split()
        assert is_held_out(label) is expected
        assert is_held_out(name) is expected
        assert is_held_out((colour, shape)) is expected
        assert is_held_out({"colour": COLOURS.index(colour), "shape": SHAPES.index(shape)}) is expected
        assert is_held_out(f"a small {colour} {shape} on a dotted background") is expected
        assert is_held_out(f"A LARGE {shape.upper()} IN {colour.upper()}") is expected
    assert not is_held_out("a photo of an object")
    assert not is_held_out("something red")
    assert not is_held_out("a square")
    assert not is_held_out("a redsquare across")  # word boundaries
    with pytest.raises(ValueError):
        is_held_out(64)


# --- determinism -------------------------------------------------------------------------------------
def test_same_index_identical_from_fresh_object_and_any_order():
    a = ShapesWorld(split="train", size=50, seed=3)
    first = [(_bytes(img), y) for img, y in (a[i] for i in range(50))]
    b = ShapesWorld(split="train", size=50, seed=3)
    order = list(range(50))[::-1]
    for i in order:
        img, y = b[i]
        assert (_bytes(img), y) == first[i]
    # index alone, in a bigger world, with negative indices
    c = ShapesWorld(split="train", size=1000, seed=3)
    assert _bytes(c[17][0]) == first[17][0]
    assert _bytes(a[-1][0]) == first[49][0]
    assert [a.caption(i) for i in range(50)] == [b.caption(i) for i in range(50)]


def test_pickle_round_trip_identical():
    ds = ShapesWorld(split="test", size=10, seed=1, image_size=72)
    ds2 = pickle.loads(pickle.dumps(ds))
    for i in range(10):
        assert _bytes(ds[i][0]) == _bytes(ds2[i][0])


def test_identical_in_subprocess():
    code = (
        "import hashlib\n"
        "from zoomshot.extract.world import ShapesWorld\n"
        "ds = ShapesWorld(split='test', size=40, seed=7)\n"
        "h = hashlib.sha256()\n"
        "for i in (39, 3, 20, 0):\n"
        "    img, y = ds[i]\n"
        "    h.update(img.tobytes()); h.update(str(y).encode()); h.update(ds.caption(i).encode())\n"
        "print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    import hashlib

    ds = ShapesWorld(split="test", size=40, seed=7)
    h = hashlib.sha256()
    for i in (39, 3, 20, 0):
        img, y = ds[i]
        h.update(img.tobytes())
        h.update(str(y).encode())
        h.update(ds.caption(i).encode())
    assert out == h.hexdigest()


def test_different_seeds_and_splits_differ():
    base = ShapesWorld(split="train", size=30, seed=0)
    other_seed = ShapesWorld(split="train", size=30, seed=1)
    other_split = ShapesWorld(split="test", size=30, seed=0)
    for other in (other_seed, other_split):
        same = sum(_bytes(base[i][0]) == _bytes(other[i][0]) for i in range(30))
        assert same == 0
        labels_a = [base[i][1] for i in range(30)]
        labels_b = [other[i][1] for i in range(30)]
        assert labels_a != labels_b
    # within one world, images differ from index to index
    assert len({_bytes(base[i][0]) for i in range(30)}) == 30


# --- content -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("image_size", [64, 96])
def test_image_size_and_mode(image_size):
    ds = ShapesWorld(size=20, seed=0, image_size=image_size)
    for i in range(20):
        img, y = ds[i]
        assert isinstance(img, Image.Image)
        assert img.mode == "RGB" and img.size == (image_size, image_size)
        assert isinstance(y, int) and 0 <= y < 64


def test_captions_mention_the_sample_factors():
    ds = ShapesWorld(size=300, seed=2)
    templates_seen = set()
    for i in range(300):
        f = ds.factors(i)
        cap = ds.caption(i)
        words = set(re.findall(r"[a-z]+", cap))
        assert SHAPES[f["shape"]] in words
        assert COLOURS[f["colour"]] in words
        assert SIZES[f["size"]] in words
        assert BACKGROUNDS[f["background"]] in words
        # ...and no other value of any factor
        for values, own in (
            (SHAPES, f["shape"]),
            (COLOURS, f["colour"]),
            (SIZES, f["size"]),
            (BACKGROUNDS, f["background"]),
        ):
            assert not (words & (set(values) - {values[own]})), cap
        assert f["label"] == ds[i][1] == W.class_label(f["colour"], f["shape"])
        assert f["class_name"] == ds.classes[f["label"]]
        assert not re.search(r"\ba [aeiou]", cap), cap  # "an orange ..."
        templates_seen.add(ds.spec(i)["template"])
    assert len(templates_seen) == len(W.CAPTION_TEMPLATES) > 1


def test_image_shows_the_requested_colour_and_size():
    """The shape's pixels carry the sample's colour (within the jitter), and for every shape a large
    one covers more such pixels than any small one."""
    ds = ShapesWorld(size=300, seed=5)
    area = {}
    for i in range(300):
        img, _ = ds[i]
        f = ds.factors(i)
        arr = np.asarray(img).astype(int)
        target = np.array(W.COLOUR_RGB[COLOURS[f["colour"]]])
        close = np.abs(arr - target).max(axis=2) <= 12
        assert close.sum() >= 60, (i, f)
        assert (np.abs(arr - np.array(ds.spec(i)["rgb"])).max(axis=2) == 0).sum() == close.sum()
        area.setdefault(f["shape"], {0: [], 1: []})[f["size"]].append(close.sum())
    assert len(area) == 8
    for shape, by_size in area.items():
        assert by_size[0] and by_size[1]
        assert max(by_size[0]) < min(by_size[1]), SHAPES[shape]


def test_labels_cover_all_classes_balanced():
    ds = ShapesWorld(size=6400, seed=0)
    labels = ds.labels()
    counts = np.bincount(labels, minlength=64)
    assert (counts > 0).all()
    assert counts.min() > 60 and counts.max() < 145  # expected 100 each
    assert [ds[i][1] for i in range(0, 6400, 640)] == labels[::640].tolist()
    sizes = Counter(ds.factors(i)["size"] for i in range(400))
    bgs = Counter(ds.factors(i)["background"] for i in range(400))
    assert len(sizes) == 2 and len(bgs) == 3


def test_include_held_out_false_never_draws_held_out():
    ds = ShapesWorld(size=4000, seed=0, include_held_out=False)
    labels = ds.labels()
    assert not set(labels.tolist()) & set(W.HELD_OUT_LABELS)
    assert len(set(labels.tolist())) == 54
    assert ds.classes == list(CLASSNAMES)  # label space unchanged
    for i in range(200):
        assert not is_held_out(ds.caption(i))
        assert not ds.factors(i)["held_out"]
    full = ShapesWorld(size=4000, seed=0, include_held_out=True)
    full_labels = full.labels()
    assert set(full_labels.tolist()) & set(W.HELD_OUT_LABELS)
    # wherever the full world's sample is not held out, the two worlds agree exactly
    for i in range(60):
        if full_labels[i] not in W.HELD_OUT_LABELS:
            assert _bytes(full[i][0]) == _bytes(ds[i][0])
            assert full.caption(i) == ds.caption(i)
    held = [i for i in range(4000) if full_labels[i] in W.HELD_OUT_LABELS][:20]
    assert all(is_held_out(full.caption(i)) for i in held)
    assert all(full.factors(i)["held_out"] for i in held)


def test_index_and_argument_errors():
    ds = ShapesWorld(size=5)
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(IndexError):
        ds[-6]
    assert len(ds) == 5 and len(list(ds)) == 5
    with pytest.raises(ValueError):
        ShapesWorld(split="")
    with pytest.raises(ValueError):
        ShapesWorld(seed=-1)


def test_transforms_applied():
    ds = ShapesWorld(size=3, transform=lambda im: np.asarray(im), target_transform=lambda y: y + 1000)
    x, y = ds[0]
    assert isinstance(x, np.ndarray) and x.shape == (64, 64, 3) and y >= 1000


def test_dataloader_with_workers():
    import torch
    from torch.utils.data import DataLoader

    ds = ShapesWorld(size=16, seed=4, transform=_to_tensor)
    batches = list(DataLoader(ds, batch_size=8, num_workers=2))
    xs = torch.cat([b[0] for b in batches])
    ys = torch.cat([b[1] for b in batches])
    assert xs.shape == (16, 3, 64, 64)
    assert ys.tolist() == [ds[i][1] for i in range(16)]
    assert torch.equal(xs[5], ds[5][0])  # ds applies the transform itself


def _to_tensor(img):
    import torch

    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


# --- rendering styles --------------------------------------------------------------------------------
#: sha256 of the first 24 images of ShapesWorld(split="test", seed=0), as the world drew them before it had
#: styles: the default style must keep every cache and the default test split as they were
PHOTO_TEST_SHA256 = "4342e84d5c9b815ea0d9f3ede14fda91489949c85234897f994b0242c7521017"


def test_the_photo_style_is_the_default_and_draws_the_images_it_drew_before_styles():
    import hashlib

    for ds in (ShapesWorld(split="test", size=24, seed=0), ShapesWorld(split="test", size=24, seed=0, style="photo")):
        h = hashlib.sha256()
        for i in range(24):
            h.update(ds[i][0].tobytes())
        assert h.hexdigest() == PHOTO_TEST_SHA256


def test_a_sketch_shows_the_same_sample_in_other_image_statistics():
    """Same factors and nuisances as the photo of the same index (only the sketch's own parameters are
    added), the shape still in its colour, large still larger than small; but no pixel in common with the
    photo and far more high-frequency energy (grain, hatching, strokes)."""
    photo, sketch = ShapesWorld(size=200, seed=5), ShapesWorld(size=200, seed=5, style="sketch")
    area, energy = {}, {"photo": [], "sketch": []}
    for i in range(200):
        p_spec, s_spec = photo.spec(i), sketch.spec(i)
        assert {k: v for k, v in s_spec.items() if k in p_spec and k != "style"} == {
            k: v for k, v in p_spec.items() if k != "style"
        }
        img = np.asarray(sketch[i][0]).astype(int)
        assert sketch[i][1] == photo[i][1] and not np.array_equal(img, np.asarray(photo[i][0]))
        close = (np.abs(img - np.array(s_spec["rgb"])).max(axis=2) == 0).sum()
        assert close >= 25, (i, sketch.factors(i))
        area.setdefault(s_spec["shape"], {0: [], 1: []})[s_spec["size"]].append(close)
        for style, ds in (("photo", photo), ("sketch", sketch)):
            grey = np.asarray(ds[i][0].convert("L")).astype(float)
            energy[style].append(np.abs(np.diff(grey, axis=1)).mean())
    for shape, by_size in area.items():
        assert np.median(by_size[0]) < np.median(by_size[1]), SHAPES[shape]
    assert np.mean(energy["sketch"]) > 2 * np.mean(energy["photo"]), {k: np.mean(v) for k, v in energy.items()}


def test_sketches_are_deterministic_and_styles_are_checked():
    a, b = ShapesWorld(size=8, seed=2, style="sketch"), ShapesWorld(size=30, seed=2, style="sketch")
    for i in (7, 0, 3):
        assert _bytes(a[i][0]) == _bytes(b[i][0]) == _bytes(pickle.loads(pickle.dumps(a))[i][0])
    with pytest.raises(ValueError, match="style must be one of 'photo', 'sketch'"):
        ShapesWorld(style="watercolour")
    from zoomshot.extract.settings import STYLES

    assert STYLES == W.STYLES  # the config checks the names the world draws


def test_the_style_is_part_of_a_cache_key_unless_it_is_the_photo_style(tmp_path):
    from zoomshot.cache.records import DataRecord
    from zoomshot.cache.settings import DatasetCfg

    def identity(**extra):
        options = {"train_size": 10, "test_size": 10, "seed": 0, "image_size": 64, **extra}
        return DatasetCfg("shapes", "shapes", "", options).identity("train", DataRecord(tmp_path / "r", "shapes", ""))

    assert identity(style="photo") == identity()  # caches made before styles stay valid
    assert identity(style="sketch") != identity()


def test_a_bad_style_is_one_config_error():
    from zoomshot.cli import config

    with pytest.raises(PipelineError, match=r"options.style' must be one of 'photo', 'sketch', got 'oil'"):
        config.from_dict({"datasets": [{"name": "s", "kind": "shapes-support", "options": {"style": "oil"}}]})


# --- prompt assets -----------------------------------------------------------------------------------
def test_templates_json():
    data = json.loads(shipped.TEMPLATES.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and "shapes" in data
    templates = data["shapes"]
    assert 5 <= len(templates) <= 8
    for t in templates:
        assert t.count("{c}") == 1
        assert t.format(c="red triangle").count("red triangle") == 1


def test_classfree_prompts_default():
    prompts = classfree_prompts()
    assert 100 <= len(prompts) <= 300
    assert len(set(prompts)) == len(prompts)
    assert all(p and p == p.strip() and not p.startswith("#") for p in prompts)
    for p in prompts:
        low = p.lower()
        for name in CLASSNAMES:
            assert not re.search(rf"\b{name}\b", low), (p, name)
        # stronger: no prompt pairs a colour with a shape at all
        has_colour = any(re.search(rf"\b{c}\b", low) for c in COLOURS)
        has_shape = any(re.search(rf"\b{s}s?\b", low) for s in SHAPES)
        assert not (has_colour and has_shape), p
        assert not is_held_out(p)
    # covers the world's vocabulary
    text = " ".join(prompts)
    for word in list(COLOURS) + list(SHAPES) + list(SIZES) + list(BACKGROUNDS):
        assert re.search(rf"\b{word}\b", text), word


def test_classfree_prompts_user_file(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("# comment\n\n  a shiny thing  \nsomething blue\n   \n#another\n", encoding="utf-8")
    assert classfree_prompts(p) == ["a shiny thing", "something blue"]
    assert classfree_prompts(str(p)) == ["a shiny thing", "something blue"]
    with pytest.raises(PipelineError, match="cannot read"):
        classfree_prompts(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(PipelineError, match="holds no prompts"):
        classfree_prompts(empty)
