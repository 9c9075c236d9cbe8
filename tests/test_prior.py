import numpy as np

from fgvc.metrics import frequency_groups, top1_group_errors, topk, topk_errors
from fgvc.prior import choose_tau, prior_correct

rng = np.random.default_rng(0)
P = rng.dirichlet(np.ones(6), size=20)
PRIOR = np.array([0.4, 0.3, 0.15, 0.1, 0.04, 0.01])


def test_tau_zero_is_identity():
    assert np.allclose(prior_correct(P, PRIOR, 0), P)


def test_equals_subtracting_tau_log_prior():
    for tau in (0.5, 1.0, 2.0):
        q = prior_correct(P, PRIOR, tau)
        logits = np.log(P) - tau * np.log(PRIOR)
        ref = np.exp(logits - logits.max(1, keepdims=True))
        assert np.allclose(q, ref / ref.sum(1, keepdims=True))
        assert np.allclose(q.sum(1), 1)


def test_tau_one_is_division_by_counts_and_scale_free():
    counts = PRIOR * 1000
    q = prior_correct(P, counts, 1.0)
    ref = P / counts
    assert np.allclose(q, ref / ref.sum(1, keepdims=True))
    assert np.allclose(prior_correct(P, PRIOR * 37.5, 1.0), prior_correct(P, PRIOR, 1.0))


def test_correction_fixes_a_prior_biased_classifier():
    # p(c|x) of a model trained on a long tail = balanced likelihood x train prior; test is uniform
    labels = rng.integers(0, 6, 2000)
    like = rng.dirichlet(np.ones(6) * 0.7, size=2000)
    like[np.arange(2000), labels] += 0.35
    biased = like * PRIOR
    biased /= biased.sum(1, keepdims=True)
    e0 = topk_errors(biased, labels)[1]
    e1 = topk_errors(prior_correct(biased, PRIOR, 1.0), labels)[1]
    assert e1 < e0 - 0.05
    tau, errors = choose_tau(biased, labels, PRIOR)
    assert tau > 0.5 and errors[tau] <= e1


def test_topk_and_errors():
    p = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
    assert topk(p, 2).tolist() == [[1, 2], [0, 1]]
    e = topk_errors(p, [2, 0], ks=(1, 2))
    assert e == {1: 0.5, 2: 0.0}


def test_frequency_groups_are_terciles():
    counts = np.array([500, 400, 300, 100, 80, 60, 20, 18, 16])
    groups, (lo, hi) = frequency_groups(counts)
    assert [int(g.sum()) for g in groups.values()] == [3, 3, 3]
    assert groups["many"][:3].all() and groups["few"][-3:].all()
    probs = np.eye(9)[[0, 0, 6]]
    ge = top1_group_errors(np.argmax(probs, axis=1), [0, 3, 6], counts)
    assert ge["many"] == (0.0, 1) and ge["medium"] == (1.0, 1) and ge["few"] == (0.0, 1)
