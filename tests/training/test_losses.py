"""Losses on plain tensors: known values, gradient direction, duplicates, Matryoshka, calibration."""
import math

import pytest
import torch
from torch.nn import functional as F

from unirep_training import losses as L
from unirep_training.objective import Objective, ObjectiveConfig

E = torch.eye(3)


def test_info_nce_known_value():
    # orthonormal pairs, scale 1: each row's logits are (1, 0, 0) -> CE = log(e + 2) - 1
    expect = math.log(math.e + 2) - 1
    assert float(L.info_nce(E, E, 1.0)) == pytest.approx(expect, abs=1e-6)
    assert float(L.info_nce(E, E, 1.0, symmetric=False)) == pytest.approx(expect, abs=1e-6)
    # scale multiplies the logits
    assert float(L.info_nce(E, E, 10.0)) == pytest.approx(math.log(math.exp(10) + 2) - 10, abs=1e-5)


def test_info_nce_gradient_pulls_pairs_together():
    torch.manual_seed(0)
    a = torch.randn(6, 8, requires_grad=True)
    b = torch.randn(6, 8)
    loss = L.info_nce(a, b, 10.0)
    loss.backward()
    with torch.no_grad():
        a2 = a - 0.05 * a.grad
        before = F.cosine_similarity(a, b).mean()
        after = F.cosine_similarity(a2, b).mean()
    assert float(L.info_nce(a2, b, 10.0)) < float(loss.detach())
    assert after > before


def test_info_nce_duplicates_are_not_negatives():
    # pairs 0 and 1 are two captions of the same image (b0 == b1); pair 2 is different
    a = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    groups = torch.tensor([7, 7, 3])
    got = L.info_nce(a, b, 5.0, groups)
    logits = 5.0 * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    keep = ~torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    manual_rows = [-(logits[i, i] - torch.logsumexp(logits[i][keep[i]], 0)) for i in range(3)]
    manual_cols = [-(logits[i, i] - torch.logsumexp(logits[:, i][keep[:, i]], 0)) for i in range(3)]
    expect = 0.5 * (torch.stack(manual_rows).mean() + torch.stack(manual_cols).mean())
    assert float(got) == pytest.approx(float(expect), abs=1e-6)
    # without the groups, the duplicate counts as a negative and the loss is higher
    assert float(L.info_nce(a, b, 5.0)) > float(got) + 0.1
    # a perfect match against a duplicate costs nothing extra
    assert torch.equal(L.duplicate_mask(groups, 3), ~keep)


def test_mse_similarity_known_values():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    # cosines (0, 1); targets (1, 0.5) -> errors (1, 0.5): MSE = (1 + 0.25) / 2
    assert float(L.mse_similarity(a, b, torch.tensor([1.0, 0.5]))) == pytest.approx(0.625)
    # target range maps score 0 -> 0.5, score 1 -> 1.0
    assert float(L.mse_similarity(a, b, torch.tensor([0.0, 1.0]), (0.5, 1.0))) == pytest.approx(0.125)


def test_mse_gradient_moves_cosine_toward_target():
    a = torch.tensor([[1.0, 0.2]], requires_grad=True)
    b = torch.tensor([[1.0, 0.0]])
    L.mse_similarity(a, b, torch.tensor([0.0])).backward()
    a2 = (a - 0.5 * a.grad).detach()
    assert float(F.cosine_similarity(a2, b)) < float(F.cosine_similarity(a.detach(), b))


def test_triplet_hardest_known_value_and_duplicates():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # row 0: pos 1, hardest neg cos(a0, b1) = 1 -> 0.2; row 1: pos 0, neg 0 -> 0.2
    assert float(L.triplet_hardest(a, b, 0.2, symmetric=False)) == pytest.approx(0.2)
    # perfectly separated pairs: zero loss
    assert float(L.triplet_hardest(E, E, 0.2)) == 0.0
    # if pair 1 duplicates pair 0, row 0 has no negative left and row 1's only candidate is excluded
    assert float(L.triplet_hardest(a, b, 0.2, torch.tensor([0, 0]), symmetric=False)) == 0.0
    # hardest, not average: adding an easy negative does not change the loss
    a3 = torch.cat([a, torch.tensor([[0.0, -1.0]])])
    b3 = torch.cat([b, torch.tensor([[0.0, -1.0]])])
    row0 = L.triplet_hardest(a3[:1].repeat(1, 1), b3[:1], 0.2)  # single row: no negatives -> 0
    assert float(row0) == 0.0


def test_cosine_loss():
    assert float(L.cosine_loss(E, E)) == pytest.approx(0.0, abs=1e-7)
    assert float(L.cosine_loss(E, E.roll(1, 0))) == pytest.approx(1.0)
    assert float(L.cosine_loss(E, -E)) == pytest.approx(2.0)


def test_matryoshka_weights_and_truncation():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    seen = {}

    def fn(ad, bd, d):
        seen[d] = (ad, bd)
        return torch.tensor(float(d))

    total, per = L.matryoshka(fn, a, b, (2, 4, 8), (1.0, 2.0, 1.0))
    assert float(total) == pytest.approx((2 + 2 * 4 + 8) / 4.0)
    assert {d: float(v) for d, v in per.items()} == {2: 2.0, 4: 4.0, 8: 8.0}
    for d, (ad, bd) in seen.items():
        assert ad.shape == (4, d)
        torch.testing.assert_close(ad, F.normalize(a[:, :d], dim=-1))
        torch.testing.assert_close(ad.norm(dim=-1), torch.ones(4))
    with pytest.raises(ValueError):
        L.matryoshka(fn, a, b, (2, 4), (1.0,))
    # equal weights = plain mean
    total, _ = L.matryoshka(fn, a, b, (2, 4, 8))
    assert float(total) == pytest.approx(14 / 3)


def test_calibration_loss_recovers_true_slope_and_bias():
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(4000, generator=g) * 2 - 1
    true_a, true_b = 6.0, -2.0
    labels = torch.bernoulli(torch.sigmoid(true_a * cos + true_b), generator=g)
    params = L.CalibrationParams([8], slope=1.0, bias=0.0)
    opt = torch.optim.Adam(params.parameters(), lr=0.1)
    first = None
    for _ in range(150):
        slope, bias = params(8)
        # plain (unbalanced) BCE: the maximum-likelihood fit of the logistic map
        loss = F.binary_cross_entropy_with_logits(slope * cos + bias, labels)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    slope, bias = (float(v.detach()) for v in params(8))
    assert float(loss.detach()) < first
    assert float(slope) == pytest.approx(true_a, rel=0.15)
    assert float(bias) == pytest.approx(true_b, abs=0.4)
    # the balanced calibration loss moves (a, b) the same way from a wrong start
    cos, labels = cos[:300], labels[:300]  # the ranking term is O(pairs^2)
    p2 = L.CalibrationParams([8], slope=1.0, bias=0.0)
    s, b = p2(8)
    before = float(L.calibration_loss(cos, labels, s, b, rank_weight=0.5).detach())
    opt2 = torch.optim.Adam(p2.parameters(), lr=0.1)
    for _ in range(40):
        s, b = p2(8)
        loss2 = L.calibration_loss(cos, labels, s, b, rank_weight=0.5)
        opt2.zero_grad()
        loss2.backward()
        opt2.step()
    assert float(loss2.detach()) < before and float(p2(8)[0].detach()) > 3.0


def test_calibration_loss_known_value_and_ranking_term():
    cos = torch.tensor([0.5, -0.5])
    labels = torch.tensor([1.0, 0.0])
    a, b = torch.tensor(2.0), torch.tensor(0.0)
    # z = (1, -1): BCE of each = log(1 + e^-1); balanced mean over classes = the same
    bce = math.log(1 + math.exp(-1))
    assert float(L.calibration_loss(cos, labels, a, b)) == pytest.approx(bce, abs=1e-6)
    # ranking term: softplus(z_neg - z_pos) = softplus(-2)
    got = float(L.calibration_loss(cos, labels, a, b, rank_weight=1.0))
    assert got == pytest.approx(bce + math.log(1 + math.exp(-2)), abs=1e-6)
    # wrong order costs more
    wrong = float(L.calibration_loss(cos.flip(0), labels, a, b, rank_weight=1.0))
    assert wrong > got
    # matrix form: ranking within rows only
    m = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    lab = torch.eye(2)
    assert float(L.calibration_loss(m, lab, torch.tensor(10.0), torch.tensor(-5.0), rank_weight=1.0)) < \
        float(L.calibration_loss(m.flip(1), lab, torch.tensor(10.0), torch.tensor(-5.0), rank_weight=1.0))


def test_uniformity_known_value():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert float(L.uniformity(x, t=2.0)) == pytest.approx(-8.0)
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(L.uniformity(same)) == pytest.approx(0.0, abs=1e-6)


def test_logit_scale_is_bounded():
    s = L.LogitScale(0.05, 0.01, 0.1)
    assert float(s().detach()) == pytest.approx(20.0)
    with torch.no_grad():
        s.log_scale.fill_(50.0)
    assert float(s().detach()) == pytest.approx(100.0)  # forward clamps to 1 / min temperature
    s.clamp_()
    assert float(s.log_scale.detach()) == pytest.approx(math.log(100.0))
    with torch.no_grad():
        s.log_scale.fill_(-50.0)
    assert float(s().detach()) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        L.LogitScale(0.5, 0.01, 0.1)


def test_objective_picks_loss_by_task():
    cfg = ObjectiveConfig.from_dict({"tasks": {"caption": "infonce", "text_pair": {"kind": "mse"},
                                               "retrieval": ["cosine", {"kind": "triplet", "margin": 0.3}]},
                                     "temperature": {"init": 0.1, "min": 0.01, "max": 0.2}})
    obj = Objective(cfg, (2, 3))
    a, b = E.clone(), E.clone()
    loss, logs = obj("caption", a, b)
    expect = 0.5 * (L.info_nce(a[:, :2], b[:, :2], 10.0) + L.info_nce(a, b, 10.0))
    assert float(loss.detach()) == pytest.approx(float(expect), abs=1e-6)
    assert set(logs) >= {"loss@2", "loss@3", "temperature"}
    c = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    loss, _ = obj("text_pair", c, c, scores=torch.tensor([1.0, 1.0, 1.0]))
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="graded"):
        obj("text_pair", a, b)
    with pytest.raises(ValueError, match="no loss configured"):
        obj("ocr", a, b)
    with pytest.raises(ValueError, match="unknown loss kind"):
        ObjectiveConfig.from_dict({"tasks": {"caption": "nope"}})


def test_in_batch_ranking_term_matches_brute_force():
    torch.manual_seed(0)
    cos = torch.randn(5, 5)
    lab = torch.eye(5)
    lab[0, 1] = lab[1, 0] = 1.0  # a duplicate pair: two positives in rows 0 and 1
    a, b = torch.tensor(3.0), torch.tensor(-1.0)
    z = a * cos + b
    brute = torch.stack([F.softplus(z[r, q] - z[r, p]) for r in range(5) for p in range(5) for q in range(5)
                         if lab[r, p] == 1 and lab[r, q] == 0]).mean()
    got = L.calibration_loss(cos, lab, a, b, rank_weight=1.0) - L.calibration_loss(cos, lab, a, b)
    assert float(got) == pytest.approx(float(brute), abs=1e-6)
