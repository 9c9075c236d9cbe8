"""Top-k errors, and errors per train-frequency group of classes."""
import math

import numpy as np


def topk(probs, k=5):
    """Indices of the k largest entries of each row, best first (ties: lower index first)."""
    k = min(k, probs.shape[1])
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def topk_errors(probs, labels, ks=(1, 5)):
    """{k: share of rows whose label is not among the k best}."""
    hit = topk(probs, max(ks)) == np.asarray(labels)[:, None]
    return {k: float(1.0 - hit[:, :k].any(axis=1).mean()) for k in ks}


def frequency_groups(counts):
    """Classes split by train count into thirds: {'many': mask, 'medium': mask, 'few': mask}, cut-offs.

    Fixed cut-offs (the usual >100 / 20-100 / <20) would put 800, 209 and 1 of iNat 2019's 1,010
    classes in the three groups; terciles of the data's own counts give groups of equal size.
    """
    counts = np.asarray(counts)
    lo, hi = np.quantile(counts, [1 / 3, 2 / 3])
    groups = {"many": counts > hi, "medium": (counts > lo) & (counts <= hi), "few": counts <= lo}
    return groups, (float(lo), float(hi))


def top1_group_errors(pred, labels, counts):
    """{group: (top-1 error, number of images)} over the frequency groups of the labels' classes,
    from the predicted class indices `pred` (N,)."""
    groups, _ = frequency_groups(counts)
    pred, labels = np.asarray(pred), np.asarray(labels)
    out = {}
    for name, in_group in groups.items():
        rows = in_group[labels]
        out[name] = (float((pred[rows] != labels[rows]).mean()) if rows.any() else float("nan"), int(rows.sum()))
    return out


def wilson_interval(k, n, z=1.96):
    """95 % (z = 1.96) Wilson score interval of a proportion k / n, as (low, high)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(a_right, b_right):
    """Exact two-sided sign test on paired outcomes: of the images where exactly one of A and B is
    right, is the split far from even? Returns (only A right, only B right, p-value)."""
    a, b = np.asarray(a_right, bool), np.asarray(b_right, bool)
    n_a, n_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = n_a + n_b
    if n == 0:
        return n_a, n_b, 1.0
    tail = sum(math.comb(n, i) for i in range(min(n_a, n_b) + 1)) / 2.0**n
    return n_a, n_b, min(1.0, 2 * tail)
