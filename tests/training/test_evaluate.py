"""Metrics on hand-made cases, the calibration fit, and evaluate.py end to end on tiny data."""
import json

import numpy as np
import pytest

from unirep_training.data.samples import Sample, Side
from unirep_training.evaluate import main as eval_main, rerank_mrr, retrieval_metrics
from unirep_training.metrics import ece, mrr, rankdata, recall_at_k, spearman, truncate
from unirep_training.pairs import build_pairset, calibration_pairs, fit_logistic


def test_identity_retrieval_is_perfect():
    x = np.eye(6, dtype=np.float32)
    rel = np.eye(6, dtype=bool)
    assert recall_at_k(x @ x.T, rel, (1, 5)) == {1: 1.0, 5: 1.0}
    assert mrr(x @ x.T, rel) == 1.0


def test_recall_and_mrr_known_values():
    sim = np.array([[0.9, 0.8, 0.1],   # relevant ranked 1st
                    [0.9, 0.8, 0.1],   # relevant (col 1) ranked 2nd
                    [0.9, 0.8, 0.1]])  # relevant (col 2) ranked 3rd
    rel = np.eye(3, dtype=bool)
    assert recall_at_k(sim, rel, (1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    assert mrr(sim, rel) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    # several relevant candidates: the best one counts (image -> any of its captions)
    rel2 = np.array([[False, True, True]] * 3)
    assert recall_at_k(sim, rel2, (1, 2))[2] == 1.0
    # ties with a non-relevant candidate count against the query
    assert recall_at_k(np.ones((2, 2)), np.eye(2, dtype=bool), (1,))[1] == 0.0
    with pytest.raises(ValueError):
        recall_at_k(sim, np.zeros((3, 3), bool))


def test_spearman_and_ranks():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    np.testing.assert_allclose(rankdata(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    # textbook case: d = (0, -1, 1, 0) -> 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([1, 3, 2, 4.0])) == pytest.approx(0.8)


def test_ece_known_values():
    # perfectly calibrated: in each bin the mean label equals the mean probability
    p = np.repeat([0.05, 0.25, 0.55, 0.95], 20)
    y = np.concatenate([[1] * 1 + [0] * 19, [1] * 5 + [0] * 15, [1] * 11 + [0] * 9, [1] * 19 + [0] * 1])
    assert ece(p, y) == pytest.approx(0.0, abs=1e-12)
    # over-confident: always 0.9, right half the time -> 0.4
    assert ece(np.full(10, 0.9), np.array([1, 0] * 5)) == pytest.approx(0.4)
    assert ece(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0  # p = 1 falls in the last bin
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    assert ece(p, rng.random(20000) < p) < 0.02


def test_fit_logistic_recovers_parameters():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(7 * x - 2)))).astype(float)
    a, b = fit_logistic(x, y)
    assert a == pytest.approx(7, rel=0.1) and b == pytest.approx(-2, abs=0.2)
    a, b = fit_logistic(x, 1 - y)  # anti-correlated: slope kept positive, no crash
    assert a > 0


def test_truncate_and_matryoshka_metrics():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(5, 8)).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(truncate(q, 4), axis=1), 1.0, rtol=1e-6)
    rel = np.eye(5, dtype=bool)
    m = retrieval_metrics(q, q, rel, 4, "x")
    assert m["x_t2i_R@1"] == 1.0 and m["x_i2t_R@1"] == 1.0
    assert rerank_mrr(q, q, rel, [4, 8], n_candidates=3) == {4: 1.0, 8: 1.0}


def test_calibration_pairs_halves_and_labels():
    samples = [Sample("caption", Side(f"t{i}", (), "query"), Side(None, (f"i{i}.jpg",), "document"), group=f"g{i}")
               for i in range(40)]
    ps = build_pairset(samples)
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
    fit = calibration_pairs(ps, q, c, half="fit", negatives_random=2, negatives_hard=1)
    ev = calibration_pairs(ps, q, c, half="eval", negatives_random=2, negatives_hard=1)
    assert set(fit[0]).isdisjoint(ev[0])  # no query in both halves
    assert len(fit[0]) + len(ev[0]) == 40 * 4 and fit[2].sum() + ev[2].sum() == 40
    for qi, ci, y in zip(*fit):
        assert (y == 1.0) == (qi == ci)


def test_evaluate_cli_on_tiny_data(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "results.json"
    assert eval_main(["--model", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out), "-q"]) == 0
    res = json.loads(out.read_text())
    assert res["dims"] == [8, 16, 32] and set(res["metrics"]) == {"8", "16", "32"}
    for d, m in res["metrics"].items():
        assert {"sts_spearman", "flickr8k_t2i_R@1", "flickr8k_t2i_R@10", "flickr8k_i2t_R@5",
                "flickr8k_rerank_MRR", "en_vi_R@1", "ece"} <= set(m)
        assert all(-1 <= v <= 1 for v in m.values())
        assert m["flickr8k_t2i_R@10"] == 1.0  # 4 dev images: everything is in the top 10
    assert res["counts"]["flickr8k"] == {"captions": 8, "images": 4}


def test_pairset_relevance_is_pairwise_not_transitive():
    def cap(text, image):
        return Sample("caption", Side(text, (), "query"), Side(None, (image,), "document"), group=image)

    ps = build_pairset([cap("a dog", "x"), cap("a dog", "y"), cap("a cat", "y"), cap("a cat", "z"), cap("a cow", "x")])
    q = {s.text: i for i, s in enumerate(ps.queries)}
    c = {s.images[0]: i for i, s in enumerate(ps.candidates)}
    rel = ps.relevant()
    assert rel[q["a dog"], c["x"]] and rel[q["a dog"], c["y"]]  # one caption, two images
    assert not rel[q["a dog"], c["z"]] and not rel[q["a cat"], c["x"]]
    assert rel.sum() == 5
