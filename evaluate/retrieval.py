"""Text-to-image and image-to-text retrieval of CLIP and of every mapped run, from cached captions.

Metric names and definitions are CLIP_benchmark's (`zeroshot_retrieval`): `image_retrieval_recall@k`
is the share of captions whose image is among the k images closest to it, `text_retrieval_recall@k`
the share of images with at least one of their captions among the k closest captions (cosine
similarity). The images are a test split's cached rows (mapped by the run's h for a run), the captions
that split's caption embeddings (`pipeline extract` with `[extract] captions`), made by the CLIP the
run was fitted to.

Ties: a candidate ranks ahead of the true one when its score is higher, or equal with a lower index,
the rule of the classification metrics (`metrics.py`). CLIP_benchmark's `torch.topk` orders exact ties
arbitrarily; they occur here when two images share a caption string (the world's captions repeat), so
`text_retrieval` can differ from CLIP_benchmark's on such ties. The test images are read, mapped and
scored in chunks of rows, so memory stays bounded by `chunk_rows` x the number of captions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zoomshot.cache import layout, store
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.runs import Maps
from zoomshot.cache.settings import Project

from .report import RECALL_K

MAX_SCORES = 1 << 24  # similarities held at once (64 MiB of float32)


def _ranks(scores: Tensor, true: Tensor) -> Tensor:
    """Rank (0 = first) of column `true[i]` in row i: higher scores first, lower index first among ties."""
    s_true = scores.gather(1, true[:, None])
    ahead = (scores > s_true) | ((scores == s_true) & (torch.arange(scores.shape[1])[None, :] < true[:, None]))
    return ahead.sum(dim=1)


def _chunk(n_other: int, chunk_rows: int) -> int:
    return max(1, min(chunk_rows, MAX_SCORES // max(1, n_other)))


def recall_at_k(
    images: Tensor, texts: Tensor, image_of_text: Tensor, ks: tuple[int, ...] = RECALL_K, chunk_rows: int = 65536
) -> dict[str, float]:
    """Retrieval recalls: `images` (N, d), `texts` (K, d), `image_of_text` (K,) the image row of each text."""
    return streamed_recall_at_k(images.split, texts, image_of_text, ks, chunk_rows)


def streamed_recall_at_k(
    image_chunks: Callable[[int], Iterable[Tensor]],
    texts: Tensor,
    image_of_text: Tensor,
    ks: tuple[int, ...] = RECALL_K,
    chunk_rows: int = 65536,
) -> dict[str, float]:
    """`recall_at_k` of images that arrive in consecutive chunks: `image_chunks(rows)` yields them, `rows` at
    a time, and is called twice. Only one chunk's scores against every text are held at once.

    Pass one takes each text's score with its own image and ranks each image's best caption; pass two
    counts, for each text, the images ahead of its own. Both passes compute the same chunks' scores the
    same way, so a text's own image never counts as ahead of itself.
    """
    txt = F.normalize(texts.float(), dim=-1)
    k_texts = txt.shape[0]

    def scored() -> Iterator[tuple[Tensor, Tensor]]:  # (dataset rows of the chunk, their scores (rows, K))
        start = 0
        for chunk in image_chunks(_chunk(k_texts, chunk_rows)):
            yield torch.arange(start, start + chunk.shape[0]), F.normalize(chunk.float(), dim=-1) @ txt.T
            start += chunk.shape[0]

    own_score, best = torch.empty(k_texts), []
    for rows, scores in scored():
        own = image_of_text[None, :] == rows[:, None]
        mine = own.any(dim=0).nonzero().squeeze(1)
        own_score[mine] = scores[image_of_text[mine] - rows[0], mine]
        # an image's best caption: the highest-scoring of its own, the lowest index among equal ones
        masked = torch.where(own, scores, torch.tensor(-torch.inf))
        top = masked.max(dim=1, keepdim=True).values
        first = torch.where(own & (masked == top), torch.arange(k_texts)[None, :], k_texts).min(dim=1).values
        best.append(_ranks(scores, first))
    i2t = torch.cat(best)
    t2i = torch.zeros(k_texts, dtype=torch.long)
    for rows, scores in scored():
        t2i += ((scores > own_score) | ((scores == own_score) & (rows[:, None] < image_of_text[None, :]))).sum(dim=0)
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float((t2i < k).float().mean())
        metrics[f"text_retrieval_recall@{k}"] = float((i2t < k).float().mean())
    return metrics


class Retrieval:
    """Retrieval metrics on one test split for CLIP and every run; {} when off or when the split's captions
    are not cached (said once)."""

    def __init__(self, project: Project, ref: str, enabled: bool, chunk_rows: int, say: Callable[[str], None]):
        self.project, self.ref, self.enabled, self.chunk_rows, self.say = project, ref, enabled, chunk_rows, say
        self._captions: dict[str, tuple[Tensor, np.ndarray] | None] = {}

    def captions(self, clip_key: str) -> tuple[Tensor, np.ndarray] | None:
        """Caption embeddings made by this CLIP and the dataset index of each caption's image."""
        if clip_key not in self._captions:
            path = layout.caption_text_path(self.project, self.ref, clip_key)
            try:
                if not path.exists():
                    raise PipelineError(
                        f"its caption embeddings ({path.name}) are not cached: add {self.ref} to "
                        f"[extract] captions and run `pipeline extract`"
                    )
                text = store.read_text(path)
                self._captions[clip_key] = torch.from_numpy(text.embeddings), text.class_of_prompt
            except PipelineError as e:
                self.say(f"no retrieval on {self.ref}: {e}")
                self._captions[clip_key] = None
        return self._captions[clip_key]

    def metrics(self, test_file: Path, maps: Maps | None, clip_key: str) -> dict[str, float]:
        """Recall@k of the cached test images (mapped by `maps`) against the captions."""
        captions = self.captions(clip_key) if self.enabled else None
        if captions is None:
            return {}
        texts, image_index = captions
        with store.open_complete(test_file) as f:
            row_of = {int(i): r for r, i in enumerate(f["index"][:])}
            if set(row_of) != set(image_index.tolist()):
                raise PipelineError(
                    f"the captions of {self.ref} are not those of the images of {test_file.name}: "
                    f"remove the caption file and extract again"
                )
            image_of_text = torch.tensor([row_of[int(i)] for i in image_index], dtype=torch.long)

            def image_chunks(rows: int) -> Iterator[Tensor]:
                """The test images, read and mapped `rows` at a time."""
                for i in range(0, len(row_of), rows):
                    images = torch.from_numpy(store.read_rows(test_file, f, slice(i, i + rows))[0])
                    yield maps.to_clip(images) if maps is not None else images

            return streamed_recall_at_k(image_chunks, texts, image_of_text, RECALL_K, self.chunk_rows)
