"""CLIP's zero-shot scores, defined once for every stage: fit distils them (PG-KD), evaluate ranks classes
by them and the adapters add to them.

    cosine_similarities(x, text) = cos(x_i, text_k)                    (N, K), in [-1, 1]
    clip_logits(x, text, scale)  = scale * cos(x_i, text_k)            what CLIP's softmax takes

A ranking (top-k, recall) is the same under either; a softmax, a loss or an added term is not, so a
function's name says which it returns. `text` rows are class embeddings or prompts, normalised here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

#: CLIP's learned logit scale (exp(4.6052) = 100): OpenAI CLIP's, and the references' `100. * f @ W`.
CLIP_LOGIT_SCALE = 100.0


def cosine_similarities(x: Tensor, text: Tensor) -> Tensor:
    """(N, K) float32 cosine similarities of the rows of x and of text; float32 because cached features are
    float16."""
    return F.normalize(x.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T


def clip_logits(x: Tensor, text: Tensor, logit_scale: float = CLIP_LOGIT_SCALE) -> Tensor:
    """(N, K) CLIP's zero-shot logits, logit_scale * cosine (PG-KD's tau is the logit scale)."""
    return logit_scale * cosine_similarities(x, text)
