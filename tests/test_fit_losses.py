"""Loss terms and scaling math of zoomshot.fit on tiny tensors with hand-computed answers."""

import math

import pytest
import torch
import torch.nn.functional as F

from zoomshot.fit.losses import cycle_terms, mse_loss, pgkd_loss, total_loss
from zoomshot.fit.spaces import affine_pinv, variance_scale

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def affine(weight, bias):
    return lambda x: x @ weight.T + bias


def test_variance_scale_uses_variance_over_all_entries():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # Over all four entries: mean 2.5, population variance 1.25 (per-column variances would average to 1.0).
    assert variance_scale(x, target=4.5) == pytest.approx(math.sqrt(4.5 / 1.25), rel=1e-12)
    big = torch.randn(70_000, 3, generator=torch.Generator().manual_seed(0)) * 3 + 5  # spans two row chunks
    c = variance_scale(big, target=2.0)
    assert (c * big.double()).var(correction=0).item() == pytest.approx(2.0, rel=1e-9)


def test_variance_scale_rejects_constant_features():
    with pytest.raises(ValueError, match="variance"):
        variance_scale(torch.ones(4, 3))


def test_affine_pinv_inverts_an_invertible_map():
    g = torch.Generator().manual_seed(1)
    weight, bias, x = torch.randn(4, 4, generator=g), torch.randn(4, generator=g), torch.randn(6, 4, generator=g)
    inv_w, inv_b = affine_pinv(weight, bias)
    torch.testing.assert_close(affine(inv_w, inv_b)(affine(weight, bias)(x)), x, atol=1e-4, rtol=0)


def test_mse_loss_is_the_share_of_variance_left():
    h_s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert mse_loss(h_s, t, variance=2.0).item() == pytest.approx((1 + 4 + 0 + 9) / 4 / 2.0)
    wide = torch.randn(64, 300, generator=torch.Generator().manual_seed(7)) * 2.0  # variance 4, any width:
    assert mse_loss(torch.zeros_like(wide), wide, 4.0).item() == pytest.approx(1.0, rel=0.05)  # the mean: ~1


def test_cycle_terms_known_values():
    s = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    u = torch.tensor([[0.5, 0.0]])
    h, h_inv = (lambda x: 2 * x), (lambda x: x + 1)
    terms = cycle_terms(s, t, u, h, h_inv, std=2.0)
    # mean over elements / std. cyc_s: |2s + 1 - s| = |s + 1| -> 2, 0, 3, 1; cyc_t: |2(t + 1) - t| = |t + 2|
    # -> 3, 3, 2, 1; cyc_u: |u + 2| -> 2.5, 2.
    assert terms["cyc_s"].item() == pytest.approx(6 / 4 / 2.0)
    assert terms["cyc_t"].item() == pytest.approx(9 / 4 / 2.0)
    assert terms["cyc_u"].item() == pytest.approx(4.5 / 2 / 2.0)
    assert set(cycle_terms(s, t, None, h, h_inv, std=1.0)) == {"cyc_s", "cyc_t"}  # no prompt set, no text term


def test_cycle_terms_vanish_for_an_exact_inverse():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(5, 5, generator=g) + 3 * torch.eye(5)
    bias = torch.randn(5, generator=g)
    inv = torch.linalg.inv(weight)
    h, h_inv = affine(weight, bias), affine(inv, -inv @ bias)
    s, t, u = (torch.randn(n, 5, generator=g) for n in (7, 6, 3))
    for name, term in cycle_terms(s, t, u, h, h_inv, std=1.0).items():
        assert term.item() == pytest.approx(0.0, abs=1e-5), name


def test_pgkd_known_values():
    t, h_s = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    u = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # Teacher logits tau*[1, 0], student tau*[0, 1] with tau = 2; the teacher's variance over the 2 prompts
    # (unbiased) is 2: lm = mean squared difference 4 / 2. ht-ce and kl are in units of log 2.
    assert pgkd_loss(h_s, t, u, tau=2.0, variant="lm").item() == pytest.approx(4.0 / 2.0)
    assert pgkd_loss(h_s, t, u, tau=2.0, variant="ht-ce").item() == pytest.approx(
        math.log(1 + math.exp(2.0)) / math.log(2)
    )
    p, q = torch.softmax(torch.tensor([2.0, 0.0]), 0), torch.softmax(torch.tensor([0.0, 2.0]), 0)
    kl = float((p * (p / q).log()).sum())
    assert pgkd_loss(h_s, t, u, tau=2.0, variant="kl").item() == pytest.approx(kl / math.log(2), rel=1e-6)
    p2, q2 = torch.softmax(torch.tensor([0.5, 0.0]), 0), torch.softmax(torch.tensor([0.0, 0.5]), 0)  # T = 4
    assert pgkd_loss(h_s, t, u, tau=2.0, variant="kl", temperature=4.0).item() == pytest.approx(
        float((p2 * (p2 / q2).log()).sum()) / math.log(2), rel=1e-6
    )


def test_pgkd_is_minimal_when_student_equals_teacher():
    g = torch.Generator().manual_seed(3)
    t, u = torch.randn(8, 6, generator=g), torch.randn(5, 6, generator=g)
    h_s = t.clone()
    assert pgkd_loss(h_s, t, u, tau=10.0, variant="lm").item() == 0.0
    assert pgkd_loss(h_s, t, u, tau=10.0, variant="kl").item() == pytest.approx(0.0, abs=1e-7)
    scaled = pgkd_loss(2.5 * t, t, u, tau=10.0, variant="lm")  # cosine logits do not see the scale
    assert scaled.item() == pytest.approx(0.0, abs=1e-10)
    z_t = 10.0 * F.normalize(t, dim=-1) @ F.normalize(u, dim=-1).T
    own_ce = (torch.logsumexp(z_t, dim=-1) - z_t.max(dim=-1).values).mean() / math.log(5)
    assert pgkd_loss(h_s, t, u, tau=10.0, variant="ht-ce").item() == pytest.approx(own_ce.item(), rel=1e-6)
    # lm does not depend on tau: it is relative to the teacher logits' spread
    other = t + 0.3 * torch.randn(8, 6, generator=g)
    assert pgkd_loss(other, t, u, tau=10.0).item() == pytest.approx(pgkd_loss(other, t, u, tau=100.0).item(), rel=1e-5)


def test_pgkd_rejects_unknown_variant():
    with pytest.raises(ValueError, match="kl"):
        pgkd_loss(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2), variant="kld")


class Recording:
    """A map that records the row count of every input it is called on."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x):
        self.calls.append(x.shape[0])
        return self.fn(x)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(3, 4, generator=g)
    return {
        "s": torch.randn(6, 4, generator=g),
        "t": torch.randn(6, 3, generator=g),
        "u": torch.randn(2, 3, generator=g),  # 2 rows: calls on u are recognisable
        "h": affine(weight, torch.randn(3, generator=g)),
        "h_inv": affine(torch.randn(4, 3, generator=g), torch.randn(4, generator=g)),
    }


def test_total_loss_combines_weighted_terms(batch):
    s, t, u, h, h_inv = batch["s"], batch["t"], batch["u"], batch["h"], batch["h_inv"]
    total, parts = total_loss(
        s, t, u, h, h_inv, w_mse=0.5, w_cyc=2.0, w_cyc_text=3.0, w_kd=4.0, tau=7.0, target_variance=2.25
    )
    cyc = cycle_terms(s, t, u, h, h_inv, std=1.5)
    expected = (
        0.5 * mse_loss(h(s), t, 2.25)
        + 2.0 * (cyc["cyc_s"] + cyc["cyc_t"])
        + 3.0 * cyc["cyc_u"]
        + 4.0 * pgkd_loss(h(s), t, u, tau=7.0)
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"mse", "cyc_s", "cyc_t", "cyc_u", "kd"}
    assert not any(p.requires_grad for p in parts.values())


def test_total_loss_skips_zero_weight_terms(batch):
    s, t, u = batch["s"], batch["t"], batch["u"]
    h, h_inv = Recording(batch["h"]), Recording(batch["h_inv"])
    total, parts = total_loss(s, t, u, h, h_inv, w_mse=1.0)
    assert set(parts) == {"mse"} and h_inv.calls == [] and h.calls == [6]
    assert total.item() == pytest.approx(mse_loss(batch["h"](s), t, 4.5).item())

    h, h_inv = Recording(batch["h"]), Recording(batch["h_inv"])
    _, parts = total_loss(s, t, u, h, h_inv, w_mse=1.0, w_cyc=1.0, w_cyc_text=0.0)
    assert set(parts) == {"mse", "cyc_s", "cyc_t"}
    assert 2 not in h.calls + h_inv.calls  # the prompt set was never mapped


def test_total_loss_rejects_impossible_weights(batch):
    s, t, h, h_inv = batch["s"], batch["t"], batch["h"], batch["h_inv"]
    with pytest.raises(ValueError, match="prompt set"):
        total_loss(s, t, None, h, h_inv, w_kd=1.0)
    with pytest.raises(ValueError, match="not all 0"):
        total_loss(s, t, batch["u"], h, h_inv, w_mse=0.0)
