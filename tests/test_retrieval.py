"""Retrieval: Recall@K (evaluate/retrieval.py) against CLIP_benchmark's own `zeroshot_retrieval` code, and
the caption embeddings `pipeline extract` caches for it."""

import json
import shutil
import tracemalloc

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics.zeroshot_retrieval import batchify
from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k as cb_recall_at_k
from helpers import run_main, run_named, shipped_config, write_toml

from zoomshot.cache import store
from zoomshot.evaluate.retrieval import recall_at_k
from zoomshot.extract.world import ShapesWorld


def _clip_benchmark(images, texts, image_of_text, ks):
    """CLIP_benchmark's computation (zeroshot_retrieval.evaluate after the encoders), verbatim in its calls."""
    img, txt = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    scores = txt @ img.T
    positive = torch.zeros_like(scores, dtype=bool)
    positive[torch.arange(len(scores)), image_of_text] = True
    out = {}
    for k in ks:
        for side, s, p in (("image", scores, positive), ("text", scores.T, positive.T)):
            out[f"{side}_retrieval_recall@{k}"] = (
                (batchify(cb_recall_at_k, s, p, 64, "cpu", k=k) > 0).float().mean().item()
            )
    return out


def _data(n_images=300, per_image=3, d=16, noise=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, d, generator=g)
    image_of_text = torch.arange(n_images).repeat_interleave(per_image)
    texts = images[image_of_text] + noise * torch.randn(len(image_of_text), d, generator=g)
    return images, texts, image_of_text


@pytest.mark.parametrize("chunk_rows", [65536, 7])
def test_recalls_equal_clip_benchmarks_without_ties(chunk_rows):
    images, texts, image_of_text = _data()
    ours = recall_at_k(images, texts, image_of_text, (1, 5, 10), chunk_rows=chunk_rows)
    theirs = _clip_benchmark(images, texts, image_of_text, (1, 5, 10))
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert 0.05 < ours["image_retrieval_recall@1"] < ours["image_retrieval_recall@10"] < 1  # informative data


def test_texts_in_shuffled_order_give_the_same_recalls():
    images, texts, image_of_text = _data(seed=1)
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))
    shuffled = recall_at_k(images, texts[perm], image_of_text[perm])
    assert shuffled == pytest.approx(recall_at_k(images, texts, image_of_text))


def test_exact_ties_rank_the_lower_index_first():
    """Two images with the same caption string: each caption ties between both images; the lower image
    index ranks first, so caption 0 finds image 0 at rank 0 and caption 1 finds image 1 at rank 1."""
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.1], [1.0, 0.1], [0.0, 1.0]])
    got = recall_at_k(images, texts, torch.tensor([0, 1, 2]), (1, 2))
    assert got["image_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert got["image_retrieval_recall@2"] == 1.0
    assert got["text_retrieval_recall@1"] == pytest.approx(2 / 3)


def test_the_test_file_is_read_in_chunks_with_the_same_recalls(tmp_path):
    """`Retrieval.metrics` streams the cached test images `chunk_rows` at a time: the file's rows are never
    all in memory at once (numpy's allocations, traced), and the recalls equal those of one whole chunk."""
    from zoomshot.cache import layout
    from zoomshot.cache.settings import ClipCfg, DatasetCfg, PathsCfg, Project, Subsets
    from zoomshot.evaluate.retrieval import Retrieval

    images, texts, image_of_text = _data(n_images=1000, per_image=1, d=2048, noise=14.0)
    project = Project(
        PathsCfg(cache_dir=str(tmp_path)), ClipCfg(), [], [DatasetCfg(name="shapes", kind="shapes")], Subsets()
    )
    index = np.arange(1000, dtype=np.int64) * 3  # dataset indices, not rows
    store.write_text(
        layout.caption_text_path(project, "shapes:test", "clip-key"),
        store.TextEmbeddings(texts.numpy(), [f"caption {i}" for i in index], index[image_of_text.numpy()], [], {}),
    )
    writer = store.FeatureWriter(tmp_path / "test.h5", 2048, {"encoder": "clip"}, {"batch_size": 1000}, 1000)
    writer.append(images.numpy(), index, np.zeros(1000, dtype=np.int64), 1000)
    test_file = writer.finish()

    def metrics(chunk_rows):
        retrieval = Retrieval(project, "shapes:test", True, chunk_rows, print)
        retrieval.captions("clip-key")  # read before the trace: captions are whole
        tracemalloc.start()
        try:
            return retrieval.metrics(test_file, None, "clip-key"), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    chunked, peak = metrics(chunk_rows=100)
    whole, whole_peak = metrics(chunk_rows=65536)
    assert chunked == whole and 0.05 < whole["image_retrieval_recall@1"] < whole["image_retrieval_recall@10"] < 1
    assert whole_peak > images.numel() * 4 and 4 * peak < whole_peak, (peak, whole_peak)  # measured 2.2 vs 12.4 MB


def test_the_test_splits_captions_are_cached_in_row_order(default_world):
    path = next((default_world / "zoomshot-out/cache/text").glob("shapes-test-captions_clip_*.h5"))
    captions = store.read_text(path)
    features = next((default_world / "zoomshot-out/cache/features").glob("shapes_test_clip_*.h5"))
    with h5py.File(features) as f:
        index = f["index"][:]
    world = ShapesWorld("test", size=1280, seed=0)
    assert np.array_equal(captions.class_of_prompt, index)  # one caption an image, each naming its image
    assert captions.prompts[:3] == [world.caption(int(i)) for i in index[:3]]
    assert captions.embeddings.shape == (1280, 128) and captions.attrs["captions_of"] == features.name


def test_missing_captions_leave_classification_and_say_why(default_world, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(default_world, folder, ignore=shutil.ignore_patterns("exports", "wds"))
    next((folder / "zoomshot-out/cache/text").glob("shapes-test-captions_*.h5")).unlink()
    run = run_named(folder, "cnn", "lstsq")
    code, out, _ = run_main(folder, "evaluate", "--runs", run, "--no-progress")
    assert code == 0 and out.count("no retrieval on shapes:test: its caption embeddings") == 1, out
    metrics = json.loads((folder / "zoomshot-out/results" / run / "shapes-test.json").read_text())["metrics"]
    assert metrics["acc1"] > 0.7 and not any("retrieval" in k for k in metrics)


def test_a_dataset_without_captions_is_one_line(default_world, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(default_world / "zoomshot-out/cache", folder / "zoomshot-out/cache")
    data = shipped_config()
    data["extract"]["captions"] = ["shapes-sus:train"]
    write_toml(folder, data)
    code, _, err = run_main(folder, "extract", "--no-progress")
    assert code == 2 and "dataset 'shapes-sus' (shapes-support) has no captions" in err, err
