"""Metrics against hand-computed values, open_clip's classifier, and chunked == one-shot."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from zoomshot.cache.zero_shot import CLIP_LOGIT_SCALE, clip_logits, cosine_similarities
from zoomshot.evaluate.metrics import MetricAccumulator, class_embeddings

# Six classes; labels unbalanced (class 0 three times); the last sample's label is unknown.
LOGITS = torch.tensor(
    [
        [5.0, 4, 3, 2, 1, 0],  # label 0: top-1 hit
        [0.0, 5, 4, 3, 2, 1],  # label 0: ranked 6th, misses top-5
        [4.0, 5, 3, 2, 1, 0],  # label 0: ranked 2nd, top-5 hit
        [0.0, 5, 1, 2, 3, 4],  # label 1: top-1 hit
        [5.0, 0, 4, 3, 2, 1],  # label 2: ranked 2nd, top-5 hit
        [5.0, 4, 3, 2, 1, 0],  # label -1
    ]
)
LABELS = torch.tensor([0, 0, 0, 1, 2, -1])
# Teacher argmax per row: 0, 0, 1, 1, 0, 0; student argmax: 0, 1, 1, 1, 0, 0 -> 5 of 6 agree.
TEACHER = F.one_hot(torch.tensor([0, 0, 1, 1, 0, 0]), 6).float()


def test_hand_computed_metrics():
    acc = MetricAccumulator(6)
    acc.update(LOGITS, LABELS, TEACHER)
    m = acc.compute(per_class=True)
    assert m["acc1"] == pytest.approx(2 / 5)
    assert m["acc5"] == pytest.approx(4 / 5)
    # Mean over the classes present in the labels (0, 1, 2), not over all six, nor the sample mean.
    assert m["mean_per_class_recall"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    # Agreement counts the unknown-label sample too.
    assert m["teacher_agreement"] == pytest.approx(5 / 6)
    assert (m["n"], m["n_labeled"]) == (6, 5)
    assert m["per_class_acc"][:3] == pytest.approx([1 / 3, 1.0, 0.0])
    assert all(math.isnan(v) for v in m["per_class_acc"][3:])


def test_class_groups_score_their_own_samples():
    acc = MetricAccumulator(6)
    acc.update(LOGITS, LABELS, TEACHER)
    m = acc.compute(groups={"novel": [0, 2], "base": [1, 3, 4, 5], "absent": [5]})
    assert m["acc1_novel"] == pytest.approx(1 / 4)  # class 0: 1 of 3, class 2: 0 of 1
    assert m["acc1_base"] == pytest.approx(1.0)  # class 1: 1 of 1; 3-5 have no samples
    assert math.isnan(m["acc1_absent"])
    assert m["acc1"] == pytest.approx(2 / 5) and "acc1_novel" not in acc.compute()


def test_without_teacher_and_below_five_classes():
    acc = MetricAccumulator(3)
    acc.update(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.0, 0, 1]]), torch.tensor([0, 1, 2]))
    m = acc.compute()
    assert m["acc1"] == pytest.approx(2 / 3)
    assert math.isnan(m["acc5"])
    assert math.isnan(m["teacher_agreement"])
    assert "per_class_acc" not in m


def test_ties_rank_lower_class_index_first():
    acc = MetricAccumulator(6)
    flat = torch.zeros(6)
    two_way = torch.tensor([0.0, 0, 1, 0, 1, 0])
    acc.update(torch.stack([flat, flat, two_way, two_way]), torch.tensor([0, 5, 2, 4]))
    m = acc.compute(per_class=True)
    # flat/0 and two_way/2 are top-1 hits; flat/5 ranks 6th; two_way/4 ranks 2nd (in the top 5).
    assert m["acc1"] == pytest.approx(2 / 4)
    assert m["acc5"] == pytest.approx(3 / 4)
    assert m["per_class_acc"][4] == 0.0


def test_all_labels_unknown_gives_nan_accuracy():
    acc = MetricAccumulator(6)
    acc.update(LOGITS, torch.full((6,), -1), TEACHER)
    m = acc.compute()
    assert math.isnan(m["acc1"]) and math.isnan(m["mean_per_class_recall"])
    assert m["teacher_agreement"] == pytest.approx(5 / 6)


def test_streaming_equals_one_shot():
    gen = torch.Generator().manual_seed(0)
    n, c = 1000, 10
    # Integer-valued logits make many exact ties, which must resolve the same in any chunking.
    student = torch.randint(0, 4, (n, c), generator=gen).float()
    teacher = torch.randint(0, 4, (n, c), generator=gen).float()
    labels = torch.randint(-1, c, (n,), generator=gen)
    whole = MetricAccumulator(c)
    whole.update(student, labels, teacher)
    streamed = MetricAccumulator(c)
    for start, stop in [(0, 1), (1, 300), (300, 301), (301, 777), (777, n)]:
        streamed.update(student[start:stop], labels[start:stop], teacher[start:stop])
    expected = whole.compute(per_class=True)
    assert json.dumps(streamed.compute(per_class=True)) == json.dumps(expected)
    assert 0 < expected["acc1"] < 1 and expected["n"] == n


def test_update_rejects_inconsistent_input():
    acc = MetricAccumulator(6)
    acc.update(LOGITS, LABELS, TEACHER)
    with pytest.raises(ValueError, match="every chunk"):
        acc.update(LOGITS, LABELS)
    with pytest.raises(ValueError, match="labels"):
        MetricAccumulator(6).update(LOGITS, torch.tensor([0, 0, 0, 1, 6, -1]))
    with pytest.raises(ValueError, match="classes"):
        MetricAccumulator(5).update(LOGITS, LABELS)


def test_cosine_similarities_is_float32_cosine():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(7, 16, generator=gen)
    emb = torch.randn(4, 16, generator=gen)
    logits = cosine_similarities(feats.half(), 2 * emb)
    expected = F.cosine_similarity(feats.half().float().unsqueeze(1), emb.unsqueeze(0), dim=-1)
    assert logits.dtype == torch.float32 and logits.shape == (7, 4)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(cosine_similarities(3 * feats, emb), cosine_similarities(feats, emb), atol=1e-6)


def test_clip_logits_are_the_logit_scale_times_the_cosines():
    feats, text = torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    cos = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    assert CLIP_LOGIT_SCALE == 100.0
    assert torch.allclose(clip_logits(feats, text), 100.0 * cos)
    assert torch.allclose(clip_logits(feats, text, logit_scale=2.5), 2.5 * cos)


def test_class_embeddings_rejects_classes_without_prompts():
    with pytest.raises(ValueError, match=r"\[1\]"):
        class_embeddings(torch.randn(3, 4), torch.tensor([0, 0, 2]), 3)
    with pytest.raises(ValueError, match="class-free"):
        class_embeddings(torch.randn(3, 4), torch.tensor([-1, -1, -1]), 3)


def test_class_embeddings_match_open_clip(tmp_path):
    import open_clip

    name = "tinytest-clip"
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    classnames = ["cat", "dog", "red square", "blue circle"]
    templates = ["a photo of a {}.", "a drawing of the {}", "{}", "itap of my {}!"]

    # Cached prompt embeddings come in any order; class_of_prompt says whose each one is.
    pairs = [(c, t) for c in range(len(classnames)) for t in templates]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(2)).tolist()
    texts = [pairs[i][1].format(classnames[pairs[i][0]]) for i in order]
    class_of_prompt = torch.tensor([pairs[i][0] for i in order])
    with torch.no_grad():
        prompt_emb = model.encode_text(tokenizer(texts))
        reference = open_clip.build_zero_shot_classifier(model, tokenizer, classnames, templates)
    # Unequal prompt norms make the per-prompt normalisation matter for the comparison.
    assert prompt_emb.norm(dim=-1).std() > 1e-2

    ours = class_embeddings(prompt_emb, class_of_prompt, len(classnames))
    assert ours.shape == (len(classnames), 32)
    assert torch.allclose(ours, reference.T, atol=1e-5)
