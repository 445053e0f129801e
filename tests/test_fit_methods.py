"""Maps, trainer, baselines and the method registry of zoomshot.fit on synthetic features with known answers."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import FREEZE, trains_or_frozen
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from zoomshot.cache.errors import PipelineError
from zoomshot.cache.runs import Maps as LinearMaps
from zoomshot.fit.baselines import linear_aligner_maps, lstsq_maps, procrustes_maps
from zoomshot.fit.methods import METHODS, fit_method, resolve_params
from zoomshot.fit.spaces import variance_scale
from zoomshot.fit.trainer import TrainConfig, seeded_linear, train_maps

MSE_ONLY = {"w_cyc": 0.0, "w_cyc_text": 0.0, "w_kd": 0.0}
#: trainer tests start from noise, so that what they check is training (each has a frozen control)
RANDOM = {"init": "random"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def orthonormal(rows, cols, g):
    """A (rows, cols) matrix with orthonormal columns (rows >= cols) or rows (rows < cols)."""
    q = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=g)).Q
    return q if rows >= cols else q.T


def top1(features, class_embeddings, labels):
    return (F.normalize(features, dim=-1) @ class_embeddings.T).argmax(-1).eq(labels).float().mean().item()


def scaled_mse(maps, s, t):
    """Zoom-shot's L_mse of h over (s, t), in the variance-aligned spaces the maps were fitted in."""
    pred = (s * maps.scale_source) @ maps.h_weight.T + maps.h_bias
    return (pred - t * maps.scale_clip).pow(2).sum(-1).mean().item()


def test_linear_maps_apply_save_and_load(tmp_path):
    g = gen(0)
    maps = LinearMaps(
        torch.randn(3, 5, generator=g),
        torch.randn(3, generator=g),
        torch.randn(5, 3, generator=g),
        torch.randn(5, generator=g),
        scale_source=0.3,
        scale_clip=2.0,
    )
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 3, generator=g)
    torch.testing.assert_close(maps.to_clip(s), ((s * 0.3) @ maps.h_weight.T + maps.h_bias) / 2.0)
    torch.testing.assert_close(maps.to_source(t), ((t * 2.0) @ maps.hinv_weight.T + maps.hinv_bias) / 0.3)
    path = tmp_path / "maps.safetensors"
    maps.save(path, metadata={"method": "test"})
    loaded = LinearMaps.load(path)
    assert torch.equal(loaded.to_clip(s), maps.to_clip(s)) and torch.equal(loaded.to_source(t), maps.to_source(t))
    assert (loaded.scale_source, loaded.scale_clip) == (0.3, 2.0)
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {"h.weight", "h.bias", "h_inv.weight", "h_inv.bias", "scale_source", "scale_clip"}
        assert f.metadata() == {"method": "test"}


def test_linear_maps_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="hinv_weight"):
        LinearMaps(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, 5), torch.zeros(5), 1.0, 1.0)


@pytest.mark.parametrize("m, d", [(10, 10), (12, 7)])
def test_lstsq_recovers_an_affine_map(m, d):
    g = gen(1)
    weight, bias = torch.randn(d, m, generator=g), 3 * torch.randn(d, generator=g)
    s = torch.randn(500, m, generator=g) * torch.linspace(0.2, 4, m) + 1.0
    t = s @ weight.T + bias
    maps = lstsq_maps(s, t, ridge=0.0, ridge_by_gcv=False)  # any ridge shrinks the 0.2-scale column a little
    torch.testing.assert_close(maps.h_weight * maps.scale_source / maps.scale_clip, weight, atol=1e-4, rtol=0)
    torch.testing.assert_close(maps.h_bias / maps.scale_clip, bias, atol=1e-4, rtol=0)
    if m == d:  # an invertible map: the reverse regression is its exact inverse
        torch.testing.assert_close(maps.to_source(t), s, atol=1e-3, rtol=0)


@pytest.mark.parametrize("m, d", [(10, 10), (6, 10), (10, 6)])
def test_procrustes_recovers_an_orthogonal_map(m, d):
    g = gen(2)
    weight, bias = 1.7 * orthonormal(d, m, g), torch.randn(d, generator=g)
    # Isotropic centered source (S_c^T S_c = N I): the case where the d < m solution is exactly least squares.
    x = torch.randn(400, m, generator=g)
    s = math.sqrt(400) * torch.linalg.qr(x - x.mean(0)).Q + 2.0
    t = s @ weight.T + bias
    maps = procrustes_maps(s, t)
    torch.testing.assert_close(maps.to_clip(s), t, atol=1e-4, rtol=0)
    torch.testing.assert_close(maps.h_weight * maps.scale_source / maps.scale_clip, weight, atol=1e-5, rtol=0)
    if m <= d:  # h is injective: h_inv undoes it exactly
        torch.testing.assert_close(maps.to_source(t), s, atol=1e-4, rtol=0)


def test_linear_aligner_faithful_and_fixed_differ_only_in_the_bias_factor():
    g = gen(3)
    s = torch.randn(300, 6, generator=g) * 3 + 1
    t = s @ torch.randn(4, 6, generator=g).T + 5
    faithful, history = linear_aligner_maps(s, t, epochs=2)
    fixed, _ = linear_aligner_maps(s, t, epochs=2, fixed=True)
    c1, c2 = variance_scale(s), variance_scale(t)
    assert (faithful.scale_source, faithful.scale_clip) == (c1, c2) and len(history) == 2
    weight, bias = fixed.h_weight, fixed.h_bias  # what SGD fitted in the scaled spaces (same seed, same run)
    assert torch.equal(faithful.h_weight, weight)
    # Their export: s @ (W c1/c2)^T + b c1/c2. The exact undoing of the scaling: s @ (W c1/c2)^T + b / c2.
    torch.testing.assert_close(faithful.to_clip(s), s @ (weight * c1 / c2).T + bias * c1 / c2)
    torch.testing.assert_close(fixed.to_clip(s), s @ (weight * c1 / c2).T + bias / c2)


def test_linear_aligner_reproduces_their_training_loop():
    """Text-to-Concept's LinearRegressionSolver.train loop, fed our seeded init and row order, gives our weights."""
    g = gen(3)
    s, t = torch.randn(300, 6, generator=g) * 3 + 1, torch.randn(300, 4, generator=g) + 2
    maps, _ = linear_aligner_maps(s, t, epochs=3, fixed=True, seed=7)
    dataset = TensorDataset(s * variance_scale(s), t * variance_scale(t))
    order = torch.Generator().manual_seed(7)
    model = seeded_linear(6, 4, order, "cpu")
    criterion = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200)
    for _ in range(3):
        for inputs, targets in DataLoader(dataset, batch_sampler=torch.randperm(300, generator=order).split(100)):
            optimizer.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
        scheduler.step()
    torch.testing.assert_close(maps.h_weight, model.weight.detach())
    torch.testing.assert_close(maps.h_bias, model.bias.detach())


def trainer_data(n, m, d, seed):
    """Uncentered, anisotropic, partly non-linear features: a realistic conditioning test for the trainer."""
    g = gen(seed)
    t = torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 2.0
    s = torch.relu(t @ torch.randn(d, m, generator=g) / math.sqrt(d) + 0.3 * torch.randn(n, m, generator=g))
    return s, t


@trains_or_frozen
def test_mse_only_trainer_reaches_the_closed_form_optimum(frozen):
    s, t = trainer_data(4000, 48, 32, seed=4)
    maps, history = train_maps(
        s, t, None, TrainConfig(batch_size=512, epochs=20, **MSE_ONLY, **RANDOM, **FREEZE[frozen])
    )
    optimum = lstsq_maps(s, t)
    assert (maps.scale_source, maps.scale_clip) == (optimum.scale_source, optimum.scale_clip)
    reached = scaled_mse(maps, s, t) <= 1.01 * scaled_mse(optimum, s, t) and history[-1]["mse"] < history[0]["mse"]
    assert reached is not frozen


def test_trainer_is_deterministic_and_reports_every_epoch():
    s, t = trainer_data(600, 12, 8, seed=5)
    u = torch.randn(5, 8, generator=gen(5))
    seen = []
    cfg = TrainConfig(epochs=3, batch_size=128)
    first, history = train_maps(s, t, u, cfg, on_epoch=seen.append)
    again, _ = train_maps(s, t, u, cfg)
    other, _ = train_maps(s, t, u, TrainConfig(epochs=3, batch_size=128, seed=1))
    assert torch.equal(first.h_weight, again.h_weight) and torch.equal(first.hinv_bias, again.hinv_bias)
    assert not torch.equal(first.h_weight, other.h_weight)
    assert seen == history and [r["epoch"] for r in history] == [0, 1, 2]
    assert set(history[0]) == {"epoch", "total", "mse", "cyc_s", "cyc_t", "cyc_u", "kd", "ridge"}


def test_untrained_inverse_is_the_pseudo_inverse_of_h():
    s, t = trainer_data(600, 8, 8, seed=6)
    maps, _ = train_maps(s, t, None, TrainConfig(epochs=2, batch_size=128, **MSE_ONLY))
    torch.testing.assert_close(maps.to_source(maps.to_clip(s)), s, atol=1e-3, rtol=1e-4)


def class_features(orthogonal, seed, n=4000, n_test=4000, d=32, m=48, classes=10, prompts=64):
    """CLIP-like t = class centroid + noise (+ a common offset); s = A t + 0.01 noise + offset.

    The class embeddings are the centroids, so the teacher's zero-shot top-1 (CLIP on t) is the ceiling a
    map can reach, and a good map reaches it: A is a random Gaussian matrix, or 2x a matrix with
    orthonormal columns for Procrustes (whose model is a scaled rotation). u: a class-free prompt set.
    """
    g = gen(seed)
    centroids = F.normalize(torch.randn(classes, d, generator=g), dim=-1)
    labels = torch.randint(classes, (n + n_test,), generator=g)
    offset = 0.3 * torch.randn(d, generator=g)
    t = centroids[labels] + 1.5 * torch.randn(n + n_test, d, generator=g) / math.sqrt(d) + offset
    a = 2 * orthonormal(m, d, g) if orthogonal else torch.randn(m, d, generator=g) / math.sqrt(d)
    s = t @ a.T + 0.01 * torch.randn(n + n_test, m, generator=g) + 0.5
    u = torch.randn(prompts, d, generator=g) / math.sqrt(d) + offset
    return {
        "s": s[:n],
        "t": t[:n],
        "u": u,
        "s_test": s[n:],
        "t_test": t[n:],
        "labels": labels[n:],
        "centroids": centroids,
        "teacher": top1(t[n:], centroids, labels[n:]),
    }


@pytest.fixture(scope="module")
def general():
    return class_features(orthogonal=False, seed=0)


@pytest.fixture(scope="module")
def rotated():
    return class_features(orthogonal=True, seed=0)


@pytest.fixture(scope="module")
def general_16k():
    return class_features(orthogonal=False, seed=0, n=16000)


# Zoom-shot runs 20 epochs at batch 128 (625 steps) from a random start: the full objective converges more
# slowly than MSE alone.
ZOOMSHOT = {"epochs": 20, "batch_size": 128, **RANDOM}
KNOWN_ANSWER = [
    # (method, params, data, margin in top-1 points below the teacher)
    ("zoomshot", {**ZOOMSHOT, **MSE_ONLY}, "general", 2),
    ("zoomshot", {**ZOOMSHOT, "w_kd": 0.0, "w_cyc_text": 0.0}, "general", 2),
    ("zoomshot", {**ZOOMSHOT, "w_kd": 0.0}, "general", 2),
    ("zoomshot", {**ZOOMSHOT, "w_cyc": 0.0, "w_cyc_text": 0.0}, "general", 2),
    ("zoomshot", {**ZOOMSHOT, "w_cyc": 0.0, "w_cyc_text": 0.0, "kd_variant": "ht-ce"}, "general", 2),
    ("zoomshot", {**ZOOMSHOT}, "general", 2),
    ("zoomshot", {**ZOOMSHOT, "kd_variant": "ht-ce"}, "general", 2),
    ("lstsq", {}, "general", 1),
    ("procrustes", {}, "rotated", 1),
    # Their recipe is a fixed 5 epochs at batch 100: it needs 16k rows (800 SGD steps) to come within ~2 points
    # (measured on seeds 0/1: faithful -1.2/-2.0, fixed -0.4/-1.8; at 4k rows -6 to -10).
    ("linear-aligner", {"fixed": True}, "general_16k", 3),
    ("linear-aligner", {}, "general_16k", 3),
]


def _student_top1(method, params, data, request):
    f = request.getfixturevalue(data)
    maps, _ = fit_method(method, f["s"], f["t"], f["u"], params, seed=0, device="cpu")
    return top1(maps.to_clip(f["s_test"]), f["centroids"], f["labels"]), f["teacher"]


@pytest.mark.parametrize("method, params, data, margin", KNOWN_ANSWER)
def test_every_method_reaches_the_teachers_zero_shot_accuracy(method, params, data, margin, request):
    student, teacher = _student_top1(method, params, data, request)
    assert student >= teacher - margin / 100, f"{method} {params}: {student:.4f} vs teacher {teacher:.4f}"


@pytest.mark.parametrize("method, params, data, margin", [row for row in KNOWN_ANSWER if row[0] == "zoomshot"])
def test_control_frozen_zoomshot_misses_the_teachers_accuracy(method, params, data, margin, request):
    """The control of each Zoom-shot row above: the same start with the optimiser frozen misses the bar."""
    student, teacher = _student_top1(method, {**params, **FREEZE[True]}, data, request)
    assert student < teacher - margin / 100, f"{method} {params} frozen: {student:.4f} vs teacher {teacher:.4f}"


def norm_varying_features(seed, n=64, n_test=2000, d=32, m=48, classes=10, prompts=64):
    """Low data where CLIP's per-image norm is not predictable from the source.

    t = rho * direction with rho ~ lognormal, independent of s = A direction + small noise. Zero-shot
    accuracy depends only on directions. L_mse must regress rho * direction, so rho acts as large
    multiplicative noise on its targets, which 64 rows for 49 unknowns per output cannot average out. PG-KD
    compares cosines with the prompts, which do not depend on rho: on these same rows its targets are
    noise-free, and with prompts spanning the CLIP space they pin the direction of h(s).
    """
    g = gen(seed)
    centroids = F.normalize(torch.randn(classes, d, generator=g), dim=-1)
    labels = torch.randint(classes, (n + n_test,), generator=g)
    direction = F.normalize(centroids[labels] + 2.5 * torch.randn(n + n_test, d, generator=g) / math.sqrt(d), dim=-1)
    rho = torch.exp(0.75 * torch.randn(n + n_test, 1, generator=g))
    a = torch.randn(m, d, generator=g) / math.sqrt(d)
    s = direction @ a.T + 0.02 * torch.randn(n + n_test, m, generator=g) / math.sqrt(m)
    u = torch.randn(prompts, d, generator=g)
    return (rho * direction)[:n], s[:n], u, s[n:], labels[n:], centroids


@trains_or_frozen
def test_pgkd_beats_mse_alone_when_clip_norms_are_unpredictable(frozen):
    """From a random start, measured: +14.2, +10.0, +12.1 points for seeds 0-2 (mean +12.1; from the ridge
    start +11.8); asserted: mean >= +8. Frozen, both fits stay at the same start: the gain is 0."""
    gains = []
    for seed in range(3):
        t, s, u, s_test, labels, centroids = norm_varying_features(seed)
        accuracy = []
        for w_kd in (0.0, 1.0):
            params = {**MSE_ONLY, **RANDOM, **FREEZE[frozen], "w_kd": w_kd}
            maps, _ = fit_method("zoomshot", s, t, u, params, seed=0, device="cpu")
            accuracy.append(top1(maps.to_clip(s_test), centroids, labels))
        gains.append(accuracy[1] - accuracy[0])
    assert (sum(gains) / len(gains) >= 0.08) is not frozen, gains


def subspace_features(seed=0, n=2000, d=24, m=12, k=6):
    """CLIP features t spanning a k-dim subspace A (+ small noise), prompts u in another subspace B, and a
    source s = t's coordinates in A (m dims). h_inv maps CLIP -> source, h back: h(h_inv(.)) has rank <= m."""
    g = gen(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g)).Q
    a, b = basis[:, :k], basis[:, k : 2 * k]
    coords = torch.randn(n, k, generator=g)
    t = coords @ a.T + 0.05 * torch.randn(n, d, generator=g) + 1.0
    s = torch.cat([coords, 0.1 * torch.randn(n, m - k, generator=g)], dim=1)
    u = torch.randn(200, k, generator=g) @ b.T + 1.0
    return s, t, u


def _relative_error(pred, target):
    return ((pred - target).norm() / (target - target.mean(0)).norm()).item()


@trains_or_frozen
def test_trained_inverse_inverts_h_on_clip_features(frozen):
    """With the image cycles on, h_inv is trained from a random start and inverts h on CLIP's image
    features (and h_inv(h(s)) returns s); frozen, both maps stay at their random start and it does not."""
    s, t, u = subspace_features()
    params = {"w_cyc": 1.0, "w_cyc_text": 0.0, "w_kd": 0.0, **RANDOM, **FREEZE[frozen]}
    maps, _ = fit_method("zoomshot", s, t, u, params, seed=0, device="cpu")
    errors = _relative_error(maps.to_clip(maps.to_source(t)), t), _relative_error(maps.to_source(maps.to_clip(s)), s)
    assert (max(errors) < 0.1) is not frozen, errors


@trains_or_frozen
def test_text_cycle_keeps_the_prompts_through_the_round_trip(frozen):
    """CLIP -> source -> CLIP can keep only m of d dimensions: trained on images alone it keeps the images'
    subspace and loses the prompts (another subspace); the text cycle makes it keep them too."""
    s, t, u = subspace_features()
    errors = {}
    for w_text in (0.0, 1.0):
        params = {"w_cyc": 1.0, "w_cyc_text": w_text, "w_kd": 0.0, **RANDOM, **FREEZE[frozen]}
        maps, _ = fit_method("zoomshot", s, t, u, params, seed=0, device="cpu")
        errors[w_text] = _relative_error(maps.to_clip(maps.to_source(u)), u)
    assert (errors[0.0] > 0.8 and errors[1.0] < 0.5) is not frozen, errors


@pytest.mark.parametrize("variant", ["lm", "kl", "ht-ce"])
@trains_or_frozen
def test_each_distillation_variant_alone_teaches_the_teachers_prompt_ranking(variant, frozen, general):
    """Trained by PG-KD alone (no reconstruction) from a random start, h(s) must rank the prompts as CLIP
    ranks them for t: the student's top prompt agrees with the teacher's far above chance (1/64)."""
    f = general
    params = {
        "w_mse": 0.0,
        "w_cyc": 0.0,
        "w_cyc_text": 0.0,
        "w_kd": 1.0,
        "kd_variant": variant,
        **RANDOM,
        **FREEZE[frozen],
    }
    maps, _ = fit_method("zoomshot", f["s"], f["t"], f["u"], params, seed=0, device="cpu")
    u_unit = F.normalize(f["u"], dim=-1)
    t_test = f["t_test"]
    teacher = (F.normalize(t_test, dim=-1) @ u_unit.T).argmax(-1)
    student = (F.normalize(maps.to_clip(f["s_test"]), dim=-1) @ u_unit.T).argmax(-1)
    agreement = (teacher == student).float().mean().item()
    assert (agreement > 0.6) is not frozen, agreement


def test_registry_lists_the_methods():
    assert set(METHODS) == {"zoomshot", "linear-aligner", "lstsq", "procrustes"}


def test_the_settings_name_what_the_trainer_builds():
    """The torch-free settings (what configs are checked against) name exactly the optimizers, schedules and
    PG-KD terms that the trainer and the losses implement, and each baseline's settings are its keyword
    arguments with the same defaults."""
    import inspect

    from zoomshot.fit import losses, method_settings, trainer

    assert set(method_settings.OPTIMIZERS) == set(trainer.OPTIMIZERS)
    assert set(method_settings.SCHEDULES) == set(trainer.SCHEDULES)
    assert set(method_settings.KD_VARIANTS) == set(losses.KD_VARIANTS)
    for name, fn in [("lstsq", lstsq_maps), ("procrustes", procrustes_maps), ("linear-aligner", linear_aligner_maps)]:
        keywords = {
            p.name: p.default
            for p in inspect.signature(fn).parameters.values()
            if p.default is not p.empty and p.name not in ("seed", "device")
        }
        assert keywords == resolve_params(name, {}), name


def test_fit_method_rejects_unknown_names_with_hints():
    s, t = torch.randn(20, 4), torch.randn(20, 3)
    with pytest.raises(PipelineError, match="linear-aligner.*lstsq.*procrustes.*zoomshot"):
        fit_method("ridge", s, t, None, {}, 0, "cpu")
    with pytest.raises(PipelineError, match="'w_kdd'.*'w_kd'"):
        fit_method("zoomshot", s, t, None, {"w_kdd": 1.0}, 0, "cpu")
    with pytest.raises(PipelineError, match="seed"):  # given as its own argument, not a setting
        fit_method("lstsq", s, t, None, {"seed": 1}, 0, "cpu")
    with pytest.raises(PipelineError, match="ridge' must be >= 0"):
        fit_method("lstsq", s, t, None, {"ridge": -1.0}, 0, "cpu")
    with pytest.raises(PipelineError, match="batch_size must be >= 1"):
        fit_method("zoomshot", s, t, None, {"batch_size": 0}, 0, "cpu")
    with pytest.raises(PipelineError, match="lr' must be float"):
        fit_method("linear-aligner", s, t, None, {"lr": "fast"}, 0, "cpu")


def test_resolve_params_fills_defaults():
    assert resolve_params("lstsq", {"ridge": 0.1}) == {"ridge": 0.1, "ridge_by_gcv": True, "target_variance": 4.5}
    assert resolve_params("zoomshot", {})["kd_variant"] == TrainConfig().kd_variant
    assert "seed" not in resolve_params("linear-aligner", {}) and resolve_params("linear-aligner", {})["t_max"] == 200
    assert "seed" not in resolve_params("zoomshot", {}) and "device" not in resolve_params("zoomshot", {})
