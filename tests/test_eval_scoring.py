"""Scoring streams test features in chunks: the same numbers as in memory, with bounded reads."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from zoomshot.cache import catalog
from zoomshot.cache.runs import Maps
from zoomshot.cache.zero_shot import cosine_similarities
from zoomshot.evaluate.gap import GapAccumulator
from zoomshot.evaluate.metrics import MetricAccumulator, class_embeddings
from zoomshot.evaluate.scoring import Classes, score


def _files(tmp_path, n=997, m=24, d=16, c=7):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, c, n)
    centroids = rng.normal(size=(c, d))
    t = centroids[labels] + rng.normal(size=(n, d))
    s = np.concatenate([t, rng.normal(size=(n, m - d))], 1) + 0.3 * rng.normal(size=(n, m))
    attrs = {"encoder": "x", "dataset": "syn", "split": "test"}
    src = catalog.import_features(tmp_path / "src.h5", s.astype(np.float32), labels, None, attrs)
    clip = catalog.import_features(tmp_path / "clip.h5", t.astype(np.float32), labels, None, attrs)
    w = torch.zeros(d, m)
    w[:, :d] = torch.eye(d)
    maps = tmp_path / "maps.safetensors"
    save_file(
        {
            "h.weight": w * 2.0,
            "h.bias": torch.full((d,), 0.1),
            "h_inv.weight": w.T.contiguous(),
            "h_inv.bias": torch.zeros(m),
            "scale_source": torch.tensor(0.5, dtype=torch.float64),
            "scale_clip": torch.tensor(3.0, dtype=torch.float64),
        },
        str(maps),
    )
    prompts = torch.from_numpy(np.repeat(centroids, 2, 0) + 0.1 * rng.normal(size=(2 * c, d))).float()
    classes = Classes(
        class_embeddings(prompts, torch.arange(c).repeat_interleave(2), c), [str(i) for i in range(c)], {}
    )
    return src, clip, Maps.load(maps), classes, s, t, labels


def test_streamed_scores_equal_in_memory_scores(tmp_path):
    src, clip, maps, classes, s, t, labels = _files(tmp_path)
    class_emb = classes.emb
    streamed = score(src, clip, classes, maps, chunk_rows=100)
    whole = score(src, clip, classes, maps, chunk_rows=10**6)
    gaps = [{k: m.pop(k) for k in ("gap", "text_cos")} for m in (streamed, whole)]
    assert streamed == whole  # counts: exactly
    assert gaps[0] == pytest.approx(gaps[1], rel=1e-12)  # float sums, in another order

    acc = MetricAccumulator(class_emb.shape[0])  # in memory, straight from the float16 cache values
    s16 = torch.from_numpy(s.astype(np.float16).astype(np.float32))
    t16 = torch.from_numpy(t.astype(np.float16).astype(np.float32))
    mapped = ((s16 * 0.5) @ (torch.eye(16, 24) * 2.0).T + 0.1) / 3.0
    acc.update(cosine_similarities(mapped, class_emb), torch.from_numpy(labels), cosine_similarities(t16, class_emb))
    expected = acc.compute()
    gap = GapAccumulator(class_emb)
    gap.update(mapped, torch.from_numpy(labels))
    assert gaps[0] == pytest.approx(gap.compute(), rel=1e-6)
    assert streamed.keys() == expected.keys()
    for k in expected:
        assert np.isclose(streamed[k], expected[k], equal_nan=True), k
    assert 0.3 < streamed["acc1"] < 1.0 and streamed["n"] == 997


def test_clip_scores_itself_with_full_agreement(tmp_path):
    _, clip, _, classes, *_ = _files(tmp_path)
    metrics = score(clip, clip, classes, None, chunk_rows=64)
    assert metrics["teacher_agreement"] == 1.0


def test_per_class_accuracy_on_request(tmp_path):
    src, clip, maps, classes, s, t, labels = _files(tmp_path)
    metrics = score(src, clip, classes, maps, chunk_rows=100, per_class=True)
    per_class = np.array(metrics["per_class_acc"])
    assert per_class.shape == (7,) and np.isclose(per_class.mean(), metrics["mean_per_class_recall"])
    assert "per_class_acc" not in score(src, clip, classes, maps, chunk_rows=100)
