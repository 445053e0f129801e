"""Writes extract/assets/generic_prompts.txt, the class-free prompt set for data that is not the world.

PG-KD and the text cycle need prompts that span CLIP's text space without naming the evaluation classes.
This set is OpenAI's 80 ImageNet templates (open_clip's OPENAI_IMAGENET_TEMPLATES) filled with the 12
supercategory names of COCO (Lin et al. 2014, "Microsoft COCO: Common Objects in Context"): broad
visual concepts, none of them an ImageNet, CIFAR, Flowers, Pets, Cars, CUB or Herbarium class name.

    python scripts/make_generic_prompts.py          # rewrites the file; tests check it is current
"""

from __future__ import annotations

from pathlib import Path

FILE = Path(__file__).resolve().parents[1] / "extract" / "assets" / "generic_prompts.txt"
COCO_SUPERCATEGORIES = (
    "person",
    "vehicle",
    "outdoor scene",
    "animal",
    "accessory",
    "sports equipment",
    "kitchenware",
    "food",
    "furniture",
    "electronic device",
    "appliance",
    "indoor scene",
)
HEADER = """\
# Class-free prompts for PG-KD and the text cycle on real data (the default unless the config names
# its own set or every dataset is the generated world). OpenAI's 80 ImageNet templates (open_clip)
# x the 12 COCO supercategories; made by scripts/make_generic_prompts.py. One prompt a line.
"""


def prompts() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t(c) for c in COCO_SUPERCATEGORIES for t in OPENAI_IMAGENET_TEMPLATES]


def text() -> str:
    return HEADER + "\n".join(prompts()) + "\n"


if __name__ == "__main__":
    FILE.write_text(text())
    print(f"{FILE}: {len(prompts())} prompts")
