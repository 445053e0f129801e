"""A procedural, captioned image world that needs no download (DESIGN.md sections 4 and 10).

Every image shows one coloured shape on a textured background. The generating factors are

* shape       (8): ``SHAPES``
* colour      (8): ``COLOURS`` (with a small per-image jitter of the RGB value)
* size        (2): ``SIZES``
* background  (3): ``BACKGROUNDS`` (plain, striped, dotted; random muted tints)
* nuisances:  position, rotation (for shapes that are not rotation invariant), stripe and dot layout.

Two rendering styles (``STYLES``) draw the same factors. ``"photo"`` (the default: the world's train and
test images) fills the shape flat on a striped, dotted or plain backdrop. ``"sketch"`` draws it as a
hand-drawn outline (jittered vertices) filled with hatch strokes of the same colour, on a grainy,
shaded gradient: the class stays readable by name (colour and shape), the image statistics do not
(a training or support set from another distribution than the test images, as SuS-X's generated images
are to the test photos).

The zero-shot classes are the 64 colour-shape combinations (``CLASSNAMES``, e.g. ``"red triangle"``,
label ``colour * 8 + shape``). ``HELD_OUT`` names 10 fixed combinations that a CLIP-training script can
leave out of its captions (see :func:`is_held_out`).

Determinism: sample ``i`` of ``(seed, split)`` depends only on ``(seed, split, i)``. Its parameters come
from numpy generators seeded with ``SeedSequence([seed, crc32(split), i, stream])``, so any index can be
produced alone, in any order, in any process, bit-identically. The class is drawn from its own stream
(rejection sampling when held-out classes are excluded), so a world built with
``include_held_out=False`` shows the same images as the full world at every index whose class is not
held out.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image, ImageDraw

__all__ = [
    "SHAPES",
    "COLOURS",
    "COLOUR_RGB",
    "SIZES",
    "BACKGROUNDS",
    "STYLES",
    "CLASSNAMES",
    "HELD_OUT",
    "HELD_OUT_LABELS",
    "CAPTION_TEMPLATES",
    "ShapesWorld",
    "class_label",
    "class_factors",
    "is_held_out",
    "sample_spec",
    "render",
    "classname_factors",
    "render_from_classname",
    "ClassNameSupportSet",
    "KShotSet",
    "first_per_class",
    "check_style",
    "caption_for",
]

# ----------------------------------------------------------------------------------------------------
# Factors
# ----------------------------------------------------------------------------------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "hexagon", "ring")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 30),
    "purple": (135, 40, 175),
    "orange": (250, 135, 20),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted")
STYLES: tuple[str, ...] = ("photo", "sketch")

N_SHAPES, N_COLOURS = len(SHAPES), len(COLOURS)
N_CLASSES = N_SHAPES * N_COLOURS

#: Class names, index = label = ``colour * len(SHAPES) + shape``.
CLASSNAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)

#: Ten fixed colour-shape combinations for held-out (compositional) evaluation. Every colour and every
#: shape keeps at least six partners in the remaining 54 classes.
HELD_OUT: tuple[str, ...] = (
    "red square",
    "green cross",
    "blue ring",
    "yellow triangle",
    "purple heart",
    "orange circle",
    "white star",
    "black hexagon",
    "red heart",
    "blue star",
)
HELD_OUT_LABELS: tuple[int, ...] = tuple(sorted(CLASSNAMES.index(n) for n in HELD_OUT))
_HELD_OUT_SET = frozenset(HELD_OUT_LABELS)
_HELD_OUT_PAIRS = frozenset(tuple(n.split(" ")) for n in HELD_OUT)

#: Caption templates. Every template names all four factors; "a" before a vowel becomes "an".
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} on a {background} background",
    "a {colour} {shape} on a {background} background, {size}",
    "a photo of a {size} {colour} {shape} against a {background} background",
    "a {background} background with a {size} {colour} {shape}",
    "a drawing of a {size} {shape} in {colour} on a {background} background",
    "there is a {size} {colour} {shape} on a {background} backdrop",
)

_ROTATABLE = frozenset({"square", "triangle", "star", "cross", "hexagon"})
_MAX_TILT_DEG = {"heart": 25.0}  # upright-ish shapes: small tilt only
# Radius of the shape's bounding circle as a fraction of image_size (every shape fits inside it, so
# with the placement margin no shape is ever cut by the image border).
_SIZE_RADIUS = {"small": (0.15, 0.19), "large": (0.27, 0.33)}
_COLOUR_JITTER = 12


def _split_code(split: str) -> int:
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string such as 'train' or 'test', got {split!r}")
    return zlib.crc32(split.encode("utf-8"))


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _split_code(split), index, stream])))


def class_label(colour: int | str, shape: int | str) -> int:
    """Label of a colour-shape combination (ids or names)."""
    c = COLOURS.index(colour) if isinstance(colour, str) else int(colour)
    s = SHAPES.index(shape) if isinstance(shape, str) else int(shape)
    if not (0 <= c < N_COLOURS and 0 <= s < N_SHAPES):
        raise ValueError(f"no such colour/shape: {colour!r}, {shape!r}")
    return c * N_SHAPES + s


def class_factors(label: int) -> tuple[int, int]:
    """``(colour id, shape id)`` of a label."""
    label = int(label)
    if not 0 <= label < N_CLASSES:
        raise ValueError(f"label must be in [0, {N_CLASSES}), got {label}")
    return divmod(label, N_SHAPES)


_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.IGNORECASE)
_SHAPE_RE = re.compile(r"\b(" + "|".join(SHAPES) + r")s?\b", re.IGNORECASE)


def is_held_out(x: Any) -> bool:
    """Whether ``x`` involves a held-out colour-shape combination.

    ``x`` may be a label (int), a ``(colour, shape)`` pair of names or ids, a factors dict (with
    ``"colour"`` and ``"shape"`` ids), or any text (a class name, a caption): text is held out when some
    colour word and some shape word it mentions form a held-out pair, e.g.
    ``"a small red square on a plain background"`` or ``"a square painted red"``.
    """
    if isinstance(x, (bool, np.bool_)):
        raise TypeError("is_held_out takes a label, a (colour, shape) pair, a factors dict or text")
    if isinstance(x, (int, np.integer)):
        class_factors(int(x))  # range check
        return int(x) in _HELD_OUT_SET
    if isinstance(x, dict):
        return class_label(x["colour"], x["shape"]) in _HELD_OUT_SET
    if isinstance(x, tuple) and len(x) == 2:
        return class_label(*x) in _HELD_OUT_SET
    if isinstance(x, str):
        colours = {m.lower() for m in _COLOUR_RE.findall(x)}
        shapes = {m.lower() for m in _SHAPE_RE.findall(x)}
        return any((c, s) in _HELD_OUT_PAIRS for c in colours for s in shapes)
    raise TypeError(f"is_held_out cannot interpret {type(x).__name__}")


# ----------------------------------------------------------------------------------------------------
# Sampling the parameters of one image
# ----------------------------------------------------------------------------------------------------
def _draw_label(seed: int, split: str, index: int, include_held_out: bool) -> int:
    rng = _rng(seed, split, index, 0)
    while True:  # rejection sampling keeps the draw uniform over the allowed classes
        for label in rng.integers(0, N_CLASSES, size=8):
            label = int(label)
            if include_held_out or label not in _HELD_OUT_SET:
                return label


def sample_spec(
    seed: int, split: str, index: int, image_size: int = 64, include_held_out: bool = True, style: str = "photo"
) -> dict:
    """All parameters of sample ``index`` of ``(seed, split)``; :func:`render` turns them into an image.

    The returned dict holds the factor ids ``shape``, ``colour``, ``size``, ``background``, the
    ``label``, the caption ``template`` id, the rendering ``style`` and the nuisance parameters (position,
    rotation, colours, texture layout). It does not depend on ``image_size`` except through the pixel
    geometry. The style changes no factor and no nuisance the photo style draws: a sketch of sample ``i``
    shows the same class, size, place and rotation as its photo.
    """
    seed, index = int(seed), int(index)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    label = _draw_label(seed, split, index, include_held_out)
    return _spec_for_label(label, _rng(seed, split, index, 1), image_size, style)


def check_style(style: str) -> str:
    """``style`` when it is one of ``STYLES``; a ``ValueError`` that lists them otherwise."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(map(repr, STYLES))}, got {style!r}")
    return style


def _spec_for_label(label: int, rng: np.random.Generator, image_size: int, style: str = "photo") -> dict:
    """The parameters of one image of class ``label``, every nuisance drawn from ``rng`` (the sketch
    style's own after the photo style's, so both styles share every photo parameter)."""
    check_style(style)
    colour, shape = divmod(label, N_SHAPES)
    u = rng.random(16)
    ints = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    size = int(u[0] * len(SIZES))
    background = int(u[1] * len(BACKGROUNDS))
    template = int(u[2] * len(CAPTION_TEMPLATES))
    lo, hi = _SIZE_RADIUS[SIZES[size]]
    radius = (lo + (hi - lo) * u[3]) * image_size
    margin = radius + 1.0
    cx = margin + (image_size - 2 * margin) * u[4]
    cy = margin + (image_size - 2 * margin) * u[5]
    shape_name = SHAPES[shape]
    if shape_name in _ROTATABLE:
        rotation = 360.0 * u[6]
    else:
        tilt = _MAX_TILT_DEG.get(shape_name, 0.0)
        rotation = tilt * (2.0 * u[6] - 1.0)
    rgb = np.clip(np.array(COLOUR_RGB[COLOURS[colour]]) + ints, 0, 255)
    # Muted background: a grey of medium lightness, slightly tinted; the pattern tone is darker/lighter.
    grey = 105.0 + 75.0 * u[7]
    tint = (u[8:11] - 0.5) * 36.0
    bg = np.clip(grey + tint, 0, 255)
    contrast = (22.0 + 22.0 * u[11]) * (1.0 if grey < 140.0 else -1.0)
    fg2 = np.clip(bg + contrast, 0, 255)
    return {
        "label": label,
        "shape": shape,
        "colour": colour,
        "size": size,
        "background": background,
        "template": template,
        "image_size": int(image_size),
        "cx": float(cx),
        "cy": float(cy),
        "radius": float(radius),
        "rotation": float(rotation),
        "rgb": tuple(int(v) for v in rgb),
        "bg_rgb": tuple(int(round(v)) for v in bg),
        "bg_rgb2": tuple(int(round(v)) for v in fg2),
        "texture_period": float(7.0 + 6.0 * u[12]),  # pixels at 64 px, scaled with image_size
        "texture_angle": float(np.pi * u[13]),
        "texture_phase": (float(u[14]), float(u[15])),
        "style": style,
        **(_sketch_spec(rng, bg) if style == "sketch" else {}),
    }


def _sketch_spec(rng: np.random.Generator, bg: np.ndarray) -> dict:
    """The sketch style's own parameters: a shaded gradient backdrop from ``bg`` to a lighter or darker
    end, its grain, and the hatch strokes and outline jitter of the shape."""
    v = rng.random(6)
    shade = (40.0 + 35.0 * v[0]) * (1.0 if bg.mean() < 140.0 else -1.0)
    return {
        "gradient_rgb": tuple(int(round(x)) for x in np.clip(bg + shade, 0, 255)),
        "gradient_angle": float(2.0 * np.pi * v[1]),
        "hatch_angle": float(np.pi * v[2]),
        "hatch_period": float(2.6 + 1.6 * v[3]),  # pixels at 64 px, scaled with image_size
        "stroke_jitter": float(0.03 + 0.05 * v[4]),  # outline vertex jitter, a fraction of the radius
        "noise_seed": int(rng.integers(0, 2**32)),  # grain and jitter: any sample renders alone
    }


def caption_for(spec: dict) -> str:
    """The caption of a sample (from :func:`sample_spec`)."""
    text = CAPTION_TEMPLATES[spec["template"]].format(
        size=SIZES[spec["size"]],
        colour=COLOURS[spec["colour"]],
        shape=SHAPES[spec["shape"]],
        background=BACKGROUNDS[spec["background"]],
    )
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    return xx, yy


def _unit_polygon(kind: str) -> np.ndarray:
    """Vertices (k, 2) of a shape of bounding radius <= 1, centred at 0, pointing up (y down)."""
    return _UNIT_POLYGONS[kind]


def _make_unit_polygons() -> dict[str, np.ndarray]:
    def regular(k: int, r: float, offset: float) -> np.ndarray:
        a = offset + 2.0 * np.pi * np.arange(k) / k
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)

    up = -np.pi / 2.0
    star_outer = regular(5, 1.0, up)
    star_inner = regular(5, 0.42, up + np.pi / 5.0)
    star = np.empty((10, 2))
    star[0::2], star[1::2] = star_outer, star_inner
    w, L = 0.34, 0.95  # cross: arm half-width, arm length
    cross = np.array(
        [[-w, -L], [w, -L], [w, -w], [L, -w], [L, w], [w, w], [w, L], [-w, L], [-w, w], [-L, w], [-L, -w], [-w, -w]]
    )
    t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
    hx = 16 * np.sin(t) ** 3
    hy = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    heart = np.stack([hx, hy], axis=1)
    heart -= (heart.max(axis=0) + heart.min(axis=0)) / 2.0  # centre the bounding box
    heart /= np.sqrt((heart**2).sum(axis=1)).max()  # bounding radius 1
    return {
        "square": regular(4, 1.0, np.pi / 4.0),  # axis aligned, half side 0.71
        "triangle": regular(3, 1.0, up),
        "star": star,
        "cross": cross,
        "hexagon": regular(6, 0.95, 0.0),
        "heart": heart,
    }


_UNIT_POLYGONS = _make_unit_polygons()


def _pattern(spec: dict, stripe: float, dot: float) -> np.ndarray | None:
    """Where the backdrop's pattern lies (None for a plain one): stripes covering ``stripe`` of their
    period, or dots of radius ``dot`` periods (plus 0.6 px)."""
    kind = BACKGROUNDS[spec["background"]]
    if kind == "plain":
        return None
    xx, yy = _grid(spec["image_size"])
    period = spec["texture_period"] * spec["image_size"] / 64.0
    px, py = spec["texture_phase"]
    if kind == "striped":
        a = spec["texture_angle"]
        proj = xx * np.cos(a) + yy * np.sin(a)
        return ((proj / period + px) % 1.0) < stripe
    r = dot * period + 0.6  # dotted: a square grid of round dots
    dx = (xx / period + px) % 1.0 - 0.5
    dy = (yy / period + py) % 1.0 - 0.5
    return (dx * dx + dy * dy) * (period * period) < r * r


def _background(spec: dict) -> np.ndarray:
    """The photo style's backdrop: flat, with stripes or dots of a second tone."""
    n = spec["image_size"]
    out = np.empty((n, n, 3), dtype=np.uint8)
    out[...] = np.array(spec["bg_rgb"], dtype=np.uint8)
    mask = _pattern(spec, 0.5, 0.22)
    if mask is not None:
        out[mask] = np.array(spec["bg_rgb2"], dtype=np.uint8)
    return out


def _sketch_background(spec: dict, noise: np.random.Generator) -> np.ndarray:
    """The sketch style's backdrop: a linear gradient, thin pencil lines or specks where the photo has
    stripes or dots, and per-pixel grain."""
    n = spec["image_size"]
    xx, yy = _grid(n)
    a = spec["gradient_angle"]
    t = ((xx - n / 2) * np.cos(a) + (yy - n / 2) * np.sin(a)) / (n * 0.71) + 0.5
    start, end = np.array(spec["bg_rgb"], np.float32), np.array(spec["gradient_rgb"], np.float32)
    out = start + np.clip(t, 0.0, 1.0)[..., None] * (end - start)
    mask = _pattern(spec, 0.14, 0.08)
    if mask is not None:
        out[mask] = 0.55 * out[mask] + 0.45 * np.array(spec["bg_rgb2"], np.float32)
    out += noise.normal(0.0, 9.0, size=(n, n, 1)).astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _outline(spec: dict, scale: float = 1.0, points: int = 48) -> list[tuple[float, float]]:
    """The shape's outline in pixels (a circle or ring as a ``points``-gon), ``scale`` times its size."""
    kind = SHAPES[spec["shape"]]
    if kind in ("circle", "ring"):
        t = 2.0 * np.pi * np.arange(points) / points
        pts = (0.92 if kind == "circle" else 0.98) * np.stack([np.cos(t), np.sin(t)], axis=1)
    else:
        pts = _unit_polygon(kind)
    a = np.deg2rad(spec["rotation"])
    c, s = np.cos(a), np.sin(a)
    r = spec["radius"] * scale
    x = (pts[:, 0] * c - pts[:, 1] * s) * r + spec["cx"]
    y = (pts[:, 0] * s + pts[:, 1] * c) * r + spec["cy"]
    return list(zip(x.tolist(), y.tolist()))


def _render_photo(spec: dict) -> Image.Image:
    img = Image.fromarray(_background(spec), "RGB")
    draw = ImageDraw.Draw(img)
    kind = SHAPES[spec["shape"]]
    cx, cy, r, rgb = spec["cx"], spec["cy"], spec["radius"], spec["rgb"]
    if kind == "circle":
        rr = 0.92 * r
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=rgb)
    elif kind == "ring":
        rr = 0.98 * r
        width = max(2, int(round(0.32 * r)))
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), outline=rgb, width=width)
    else:
        draw.polygon(_outline(spec), fill=rgb)
    return img


def _render_sketch(spec: dict) -> Image.Image:
    """Hatch strokes inside the shape, a jittered hand-drawn outline around it, both in its colour."""
    n, r, rgb = spec["image_size"], spec["radius"], spec["rgb"]
    noise = np.random.default_rng(spec["noise_seed"])
    inside = Image.new("L", (n, n), 0)
    draw_inside = ImageDraw.Draw(inside)
    outer = _outline(spec)
    draw_inside.polygon(outer, fill=255)
    rings = [outer]
    if SHAPES[spec["shape"]] == "ring":
        hole = _outline(spec, 0.66 / 0.98)
        draw_inside.polygon(hole, fill=0)
        rings.append(hole)
    xx, yy = _grid(n)
    a, period = spec["hatch_angle"], spec["hatch_period"] * n / 64.0
    hatch = (((xx * np.cos(a) + yy * np.sin(a)) / period) % 1.0) < 0.45
    out = _sketch_background(spec, noise)
    out[(np.asarray(inside) > 0) & hatch] = np.array(rgb, dtype=np.uint8)
    img = Image.fromarray(out, "RGB")
    draw = ImageDraw.Draw(img)
    width = max(1, int(round(0.1 * r)))
    for ring in rings:
        pts = np.array(ring) + noise.normal(0.0, spec["stroke_jitter"] * r, size=(len(ring), 2))
        pts = [tuple(p) for p in pts.tolist()]
        draw.line(pts + pts[:1], fill=rgb, width=width, joint="curve")
    return img


def render(spec: dict) -> Image.Image:
    """Draw the RGB image described by ``spec`` (from :func:`sample_spec`) in its style."""
    return _render_sketch(spec) if spec.get("style") == "sketch" else _render_photo(spec)


# ----------------------------------------------------------------------------------------------------
# Rendering from a class name alone (the support sets of SuS-X, arXiv 2211.16198)
# ----------------------------------------------------------------------------------------------------
def classname_factors(name: str) -> tuple[int, int]:
    """``(colour id, shape id)`` named by a class name such as ``"red triangle"`` (or ``"a red
    triangle"``): exactly one colour word and one shape word; anything else is a ``ValueError``."""
    colours = {m.lower() for m in _COLOUR_RE.findall(name)}
    shapes = {m.lower() for m in _SHAPE_RE.findall(name)}
    if len(colours) != 1 or len(shapes) != 1:
        raise ValueError(
            f"class name {name!r} must name exactly one colour ({', '.join(COLOURS)}) and one "
            f"shape ({', '.join(SHAPES)})"
        )
    return COLOURS.index(colours.pop()), SHAPES.index(shapes.pop())


def render_from_classname(name: str, seed: int, index: int, image_size: int = 64, style: str = "photo") -> Image.Image:
    """Image ``index`` of a support set rendered from the class name alone, in ``style``.

    The world generator plays the part of SuS-X's text-to-image model: only the colour and the shape
    come from ``name``; size, background, position, rotation, tints and texture are drawn at random
    from a generator seeded by ``(seed, name, index)`` (independent of every train/test split's
    streams), so any image can be rendered alone, in any order or process, bit-identically.
    """
    seed, index = int(seed), int(index)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    colour, shape = classname_factors(name)
    key = " ".join(name.lower().split())
    rng = _rng(seed, f"support-set:{key}", index, 1)
    return render(_spec_for_label(colour * N_SHAPES + shape, rng, int(image_size), style))


# ----------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------
def _check_seed_and_size(seed: int, image_size: int) -> None:
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 32 <= int(image_size) <= 512:
        raise ValueError(f"image_size must be in [32, 512] (64-96 recommended), got {image_size}")


class ShapesWorld(torch.utils.data.Dataset):
    """``size`` procedural images of split ``split``; ``ds[i] -> (PIL RGB image, label)``.

    ``classes[label]`` is the class name (64 colour-shape combinations, always all 64, also when
    ``include_held_out=False``, which only stops held-out classes from being drawn). ``caption(i)`` and
    ``factors(i)`` are computed without rendering the image. Picklable (plain attributes only), so it
    works with DataLoader workers; ``transform`` / ``target_transform`` as in torchvision.
    """

    classes: list[str] = list(CLASSNAMES)

    def __init__(
        self,
        split: str = "train",
        size: int = 10_000,
        seed: int = 0,
        image_size: int = 64,
        include_held_out: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        style: str = "photo",
    ) -> None:
        _split_code(split)
        if int(size) < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        _check_seed_and_size(seed, image_size)
        self.style = check_style(style)
        self.split = split
        self.size = int(size)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.include_held_out = bool(include_held_out)
        self.transform = transform
        self.target_transform = target_transform
        self.classes = list(CLASSNAMES)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return self.size

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for ShapesWorld of size {self.size}")
        return i

    def spec(self, i: int) -> dict:
        """All generation parameters of sample ``i`` (see :func:`sample_spec`)."""
        return sample_spec(self.seed, self.split, self._index(i), self.image_size, self.include_held_out, self.style)

    def image(self, i: int) -> Image.Image:
        return render(self.spec(i))

    def __getitem__(self, i: int):
        spec = self.spec(i)
        img, target = render(spec), spec["label"]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def caption(self, i: int) -> str:
        return caption_for(self.spec(i))

    def factors(self, i: int) -> dict:
        """Factor ids and names of sample ``i``: ``shape``, ``colour``, ``size``, ``background`` (ids),
        ``label``, ``class_name``, ``*_name`` for each factor, and ``held_out``."""
        spec = self.spec(i)
        out = {k: spec[k] for k in ("shape", "colour", "size", "background", "label")}
        out.update(
            shape_name=SHAPES[spec["shape"]],
            colour_name=COLOURS[spec["colour"]],
            size_name=SIZES[spec["size"]],
            background_name=BACKGROUNDS[spec["background"]],
            class_name=CLASSNAMES[spec["label"]],
            held_out=spec["label"] in _HELD_OUT_SET,
        )
        return out

    def labels(self) -> np.ndarray:
        """All labels (int64), without rendering."""
        return np.array(
            [_draw_label(self.seed, self.split, i, self.include_held_out) for i in range(self.size)], dtype=np.int64
        )

    def captions(self, indices: Iterable[int] | None = None) -> list[str]:
        idx = range(self.size) if indices is None else indices
        return [self.caption(i) for i in idx]

    def __repr__(self) -> str:
        return (
            f"ShapesWorld(split={self.split!r}, size={self.size}, seed={self.seed}, "
            f"image_size={self.image_size}, include_held_out={self.include_held_out}, style={self.style!r})"
        )


class ClassNameSupportSet(torch.utils.data.Dataset):
    """A name-only support set: ``per_class`` images of every class name, each rendered by
    :func:`render_from_classname` from the name alone; ``ds[i] -> (PIL RGB image, label)`` with
    ``label = i // per_class`` (class-major order), the index of the name in ``classnames``."""

    def __init__(
        self,
        per_class: int = 16,
        seed: int = 0,
        image_size: int = 64,
        classnames: Iterable[str] = CLASSNAMES,
        transform: Callable | None = None,
        style: str = "sketch",
    ) -> None:
        if int(per_class) < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        _check_seed_and_size(seed, image_size)
        self.style = check_style(style)
        self.classes = list(classnames)
        for name in self.classes:
            classname_factors(name)  # fail early on a name the generator cannot draw
        self.per_class, self.seed, self.image_size = int(per_class), int(seed), int(image_size)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.classes) * self.per_class

    def __getitem__(self, i: int):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a support set of {len(self)} images")
        label, k = divmod(i, self.per_class)
        img = render_from_classname(self.classes[label], self.seed, k, self.image_size, self.style)
        return (self.transform(img) if self.transform is not None else img), label

    def labels(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.classes), dtype=np.int64), self.per_class)


def first_per_class(world: ShapesWorld, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` samples of every class of ``world``, class-major (label 0's
    first, then label 1's, ...), from its labels alone; a ``ValueError`` when the world is too small."""
    labels = world.labels()
    rows = [np.flatnonzero(labels == c)[:per_class] for c in range(N_CLASSES)]
    short = [CLASSNAMES[c] for c, r in enumerate(rows) if len(r) < per_class]
    if short:
        raise ValueError(
            f"{world!r} holds fewer than {per_class} images of {len(short)} classes (e.g. {short[0]!r}); make it larger"
        )
    return np.concatenate(rows)


class KShotSet(torch.utils.data.Dataset):
    """An in-distribution k-shot support set: the first ``per_class`` images of each class that the
    world's generator draws for split ``split`` (the train split by default: the same images, and the
    same style, as the world's own training images); ``ds[i] -> (PIL RGB image, label)``, class-major
    like :class:`ClassNameSupportSet`. Only labels are drawn to find them, never images."""

    def __init__(
        self,
        per_class: int = 16,
        seed: int = 0,
        image_size: int = 64,
        split: str = "train",
        style: str = "photo",
        transform: Callable | None = None,
    ) -> None:
        if int(per_class) < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        # enough draws that every class is found with near certainty (a class's count is binomial)
        size = N_CLASSES * int(per_class) * 3 + 400
        self.world = ShapesWorld(split, size, seed, image_size, style=style, transform=transform)
        self.classes, self.per_class = list(CLASSNAMES), int(per_class)
        self.indices = first_per_class(self.world, self.per_class)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.world[int(self.indices[i])]

    def labels(self) -> np.ndarray:
        return np.repeat(np.arange(N_CLASSES, dtype=np.int64), self.per_class)
