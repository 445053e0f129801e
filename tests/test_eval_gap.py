"""The modality gap as numbers, on features with a known answer, streamed in chunks as scoring does."""

import math

import pytest
import torch

from zoomshot.evaluate.gap import GapAccumulator

TEXT = torch.eye(4)[:2] * 3.0  # two classes along e1 and e2 (not unit: the accumulator normalises)


def gap_of(features, labels, chunks=1):
    acc = GapAccumulator(TEXT)
    for f, y in zip(features.chunk(chunks), labels.chunk(chunks)):
        acc.update(f, y)
    return acc.compute()


def test_images_on_their_class_text_have_no_gap():
    features = torch.cat([TEXT, 2 * TEXT])
    assert gap_of(features, torch.tensor([0, 1, 0, 1])) == pytest.approx({"gap": 0.0, "text_cos": 1.0})


def test_images_off_the_text_plane_have_the_known_gap():
    # every image at e3: centroid e3, text centroid (e1 + e2) / 2 -> distance sqrt(1 + 1/2); cosine 0
    features = torch.eye(4)[2].repeat(6, 1)
    got = gap_of(features, torch.tensor([0, 1, 0, 1, 0, -1]), chunks=3)
    assert got == pytest.approx({"gap": math.sqrt(1.5), "text_cos": 0.0})


def test_chunks_give_the_one_shot_numbers_and_unknown_labels_only_move_the_gap():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(50, 4, generator=g)
    labels = torch.randint(-1, 2, (50,), generator=g)
    assert gap_of(features, labels, chunks=7) == pytest.approx(gap_of(features, labels))
    known = labels >= 0
    assert gap_of(features[known], labels[known])["text_cos"] == pytest.approx(gap_of(features, labels)["text_cos"])
    assert math.isnan(GapAccumulator(TEXT).compute()["gap"])
