"""The modality gap as numbers: how far (mapped) image features sit from CLIP's class-text features.

CLIP's image and text embeddings occupy two separate cones of the unit sphere (Liang et al., 2022,
"Mind the gap"); a map into CLIP's space inherits or changes that gap, and the report shows it per run.
Both numbers are on L2-normalised features, streamed over chunks so a large test set stays in bounded
memory:

* `gap`: the distance between the centroid of the image features and the centroid of the class-text
  embeddings (0 = no gap, at most 2);
* `text_cos`: the mean cosine of each labelled image feature to its own class's text embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class GapAccumulator:
    """Sums over chunks: a streamed test set gives the one-shot numbers (up to float rounding)."""

    def __init__(self, class_emb: Tensor) -> None:
        self.text = F.normalize(class_emb.double(), dim=-1)
        self.image_sum = torch.zeros(self.text.shape[1], dtype=torch.float64)
        self.n = 0
        self.cos_sum = 0.0
        self.n_labeled = 0

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add one chunk of image features (rows) with their labels (-1 = unknown, left out of text_cos)."""
        image = F.normalize(features.double(), dim=-1)
        self.image_sum += image.sum(dim=0)
        self.n += image.shape[0]
        known = labels >= 0
        own_text = self.text[labels[known].long()]
        self.cos_sum += float((image[known] * own_text).sum())
        self.n_labeled += int(known.sum())

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            return {"gap": math.nan, "text_cos": math.nan}
        gap = torch.linalg.vector_norm(self.image_sum / self.n - self.text.mean(dim=0))
        return {"gap": float(gap), "text_cos": self.cos_sum / self.n_labeled if self.n_labeled else math.nan}


@dataclass
class GapView:
    """What the modality-gap figure of one test set draws: CLIP's image and class-text features (the
    projection is fitted on these two), mapped encoder features by label, and each group's measured gap."""

    clip_image: np.ndarray
    clip_text: np.ndarray
    classnames: list[str]
    mapped: dict[str, np.ndarray] = field(default_factory=dict)
    gaps: dict[str, float] = field(default_factory=dict)  # "CLIP" and each mapped label -> `gap`
