"""Does reduced-size JPEG decoding (`[extract] jpeg_draft`) change zero-shot top-1? The world's test
images rendered at 4x their size (256 px), saved as JPEGs (quality 90) in an ImageFolder tree, extracted
with the shipped tiny CLIP (64 px input) once with draft decoding (libjpeg decodes at 1/4 scale, 64 px)
and once without (full 256 px decode, then the bicubic resize), both scored against the same class
prompts. Printed: both top-1, the share of images whose prediction changes, and the binomial standard
error of top-1 (the noise of a test set of this size).

    python benchmarks/draft_top1.py [--images 1280] [--size 256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from world import append_result  # noqa: E402  (benchmarks/world.py, beside this script)

from zoomshot.cache import layout, store  # noqa: E402
from zoomshot.cli import config as C  # noqa: E402
from zoomshot.evaluate.metrics import class_embeddings  # noqa: E402
from zoomshot.extract.runner import run_extract  # noqa: E402
from zoomshot.extract.world import CLASSNAMES, ShapesWorld  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "pipeline.toml"


def render(root: Path, n: int, size: int) -> None:
    world = ShapesWorld(split="test", size=n, seed=0, image_size=size)
    for i in range(n):
        image, label = world[i]
        path = root / "test" / f"{label:02d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.convert("RGB").save(path, quality=90)


def predictions(project, ref: str, text: Path) -> tuple[np.ndarray, np.ndarray]:
    """(correct, predicted class) of CLIP's zero-shot prediction per image, the classifier `pipeline evaluate`
    uses."""
    feats = store.read_features(layout.feature_path(project, "clip", ref))
    emb = store.read_text(text)
    classes = class_embeddings(
        torch.from_numpy(emb.embeddings), torch.from_numpy(emb.class_of_prompt), len(emb.classnames)
    )
    predicted = (torch.from_numpy(feats.features) @ classes.T).argmax(1).numpy()
    return predicted == feats.labels, predicted


def main() -> None:
    import tomllib

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1280)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    world = ShapesWorld(split="test", size=args.images, seed=0)
    missing = len(CLASSNAMES) - len({world.spec(i)["label"] for i in range(args.images)})
    if missing:  # an ImageFolder tree has a folder per class it holds; the prompts name every class
        ap.error(
            f"--images {args.images} leaves {missing} of the {len(CLASSNAMES)} classes without an image; "
            "use more images (the default 1,280 covers every class)"
        )
    shipped = tomllib.loads(SHIPPED.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "world-jpegs"
        render(root, args.images, args.size)
        (Path(tmp) / "classnames.txt").write_text("".join(f"{c}\n" for c in CLASSNAMES))
        out = {}
        for draft in (True, False):
            cfg = C.from_dict(
                {
                    "paths": {"cache_dir": str(Path(tmp) / "cache")},
                    "clip": shipped["clip"],
                    "datasets": [
                        {
                            "name": "world",
                            "kind": "imagefolder",
                            "root": str(root),
                            "options": {"classnames_file": str(Path(tmp) / "classnames.txt")},
                        }
                    ],
                    "extract": {"splits": ["world:test"], "batch_size": 128, "device": "cpu", "jpeg_draft": draft},
                }
            )
            run_extract(cfg.project, cfg.extract, progress=False, say=lambda line: None)
            out[draft] = predictions(cfg.project, "world:test", layout.class_text_path(cfg.project, "world"))
    n = len(out[True][0])
    acc = {k: float(v[0].mean()) for k, v in out.items()}
    changed = float((out[True][1] != out[False][1]).mean())
    se = float(np.sqrt(acc[False] * (1 - acc[False]) / n))
    rec = {
        "images": n,
        "render_size": args.size,
        "input_size": 64,
        "top1_draft": acc[True],
        "top1_full": acc[False],
        "predictions_changed": changed,
        "binomial_se": se,
    }
    print(
        f"{n} world test images rendered at {args.size} px as JPEG q90, tiny CLIP at 64 px: top-1 "
        f"{100 * acc[True]:.2f} % with draft decoding, {100 * acc[False]:.2f} % without "
        f"(difference {100 * (acc[True] - acc[False]):+.2f} points; binomial standard error "
        f"{100 * se:.2f}); {100 * changed:.2f} % of predictions change"
    )
    append_result("draft_top1", rec)


if __name__ == "__main__":
    main()
