"""Zero-shot scoring and streaming classification metrics (DESIGN.md section 6).

Definitions follow CLIP_benchmark's `zeroshot_classification` so that our numbers sit beside theirs:
top-k accuracy counts a sample correct when its label is among the k highest logits; mean per-class
recall is sklearn's `balanced_accuracy_score` on argmax predictions (the mean over the classes present
in the labels of each class's recall), reproduced here without sklearn.

Ties: classes are ranked by a stable descending sort, so among exactly equal logits the lower class
index ranks first. That is torch.argmax's rule (which CLIP_benchmark's mean per-class recall uses);
torch.topk (used by its top-k accuracy) orders ties arbitrarily, so the two can differ only on samples
with exactly tied logits at the k-th place. A fixed rule keeps results reproducible and chunking-invariant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

TOP_K = 5


def class_embeddings(prompt_embeddings: Tensor, class_of_prompt: Tensor, num_classes: int) -> Tensor:
    """(C, d) classifier: normalise each prompt, average per class, normalise again.

    Per-prompt normalisation first gives every template the same weight whatever its norm; this equals
    open_clip's `build_zero_shot_classifier(...)` transposed, computed from cached prompt embeddings.
    """
    if prompt_embeddings.ndim != 2 or class_of_prompt.shape != prompt_embeddings.shape[:1]:
        raise ValueError(
            f"expected (K, d) embeddings and (K,) class ids, got {tuple(prompt_embeddings.shape)} "
            f"and {tuple(class_of_prompt.shape)}"
        )
    if class_of_prompt.numel() and (class_of_prompt.min() < 0 or class_of_prompt.max() >= num_classes):
        raise ValueError(f"class_of_prompt must lie in [0, {num_classes}) (a class-free prompt set has none)")
    counts = torch.bincount(class_of_prompt, minlength=num_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes without any prompt: {missing}")
    unit = F.normalize(prompt_embeddings.float(), dim=-1)
    sums = torch.zeros(num_classes, unit.shape[1], dtype=unit.dtype).index_add_(0, class_of_prompt, unit)
    return F.normalize(sums / counts.unsqueeze(1), dim=-1)


def _top_k(logits: Tensor, k: int) -> Tensor:
    """(N, k) class indices, best first, lower index first among ties (see module docstring)."""
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


class MetricAccumulator:
    """Integer counts over chunks, so a streamed test set gives exactly the one-shot numbers."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.class_total = torch.zeros(num_classes, dtype=torch.long)
        self.class_correct = torch.zeros(num_classes, dtype=torch.long)
        self.correct_top_k = 0
        self.n = 0
        self.agree = 0
        self.has_teacher: bool | None = None

    def update(self, student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None = None) -> None:
        """Add one chunk. Labels of -1 (unknown) count only towards `n` and teacher agreement."""
        labels = labels.long()
        n_rows = labels.shape[0]
        if student_logits.shape != (n_rows, self.num_classes):
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} do not match "
                f"{n_rows} labels x {self.num_classes} classes"
            )
        if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} != {tuple(student_logits.shape)}")
        if ((labels < -1) | (labels >= self.num_classes)).any():
            raise ValueError(f"labels must be -1 (unknown) or in [0, {self.num_classes})")
        if self.has_teacher is not None and self.has_teacher != (teacher_logits is not None):
            raise ValueError("teacher logits must be given for every chunk or for none")
        self.has_teacher = teacher_logits is not None

        top = _top_k(student_logits, min(TOP_K, self.num_classes))
        if teacher_logits is not None:
            self.agree += int((top[:, 0] == _top_k(teacher_logits, 1)[:, 0]).sum())
        self.n += n_rows
        known = labels >= 0
        y = labels[known]
        hit = top[known] == y.unsqueeze(1)
        self.class_total += torch.bincount(y, minlength=self.num_classes)
        self.class_correct += torch.bincount(y[hit[:, 0]], minlength=self.num_classes)
        self.correct_top_k += int(hit.any(dim=1).sum())

    def compute(
        self, per_class: bool = False, groups: dict[str, list[int]] | None = None
    ) -> dict[str, float | int | list[float]]:
        """acc1, acc5 (NaN below 5 classes), mean_per_class_recall, teacher_agreement (NaN without a
        teacher), n (all samples) and n_labeled; per_class_acc (NaN for absent classes) on request;
        `acc1_<group>` for each named group of classes (top-1 over the samples of those classes)."""
        n_labeled = int(self.class_total.sum())
        present = self.class_total > 0
        recall = self.class_correct.double() / self.class_total.clamp(min=1)
        result: dict[str, float | int | list[float]] = {
            "acc1": _ratio(int(self.class_correct.sum()), n_labeled),
            "acc5": _ratio(self.correct_top_k, n_labeled) if self.num_classes >= TOP_K else math.nan,
            "mean_per_class_recall": float(recall[present].mean()) if present.any() else math.nan,
            "teacher_agreement": _ratio(self.agree, self.n) if self.has_teacher else math.nan,
            "n": self.n,
            "n_labeled": n_labeled,
        }
        if per_class:
            result["per_class_acc"] = torch.where(present, recall, math.nan).tolist()
        for name, classes in (groups or {}).items():
            idx = torch.as_tensor(classes, dtype=torch.long)
            result[f"acc1_{name}"] = _ratio(int(self.class_correct[idx].sum()), int(self.class_total[idx].sum()))
        return result
