"""The probability correction: divide by the training prior (post-hoc logit adjustment).

Train is long-tailed, val and test are uniform, so a model trained on train over-predicts the
frequent classes. p'_c = p_c / prior_c ** tau, renormalised; tau = 1 is the original's division
by the class counts, tau = 0 is the identity. Equivalently argmax(log p_c - tau * log prior_c)
(Menon et al., ICLR 2021).
"""
import numpy as np

from .metrics import topk_errors

TAU_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def prior_correct(probs, prior, tau=1.0):
    """Corrected probabilities (N, K) for probabilities `probs` (N, K) and a prior (K,).

    The prior need not sum to 1: a constant factor cancels in the renormalisation.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if tau == 0:
        return probs
    logp = np.log(np.clip(probs, 1e-300, None)) - tau * np.log(np.asarray(prior, dtype=np.float64))
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def choose_tau(probs, labels, prior, grid=TAU_GRID):
    """The tau of `grid` with the lowest top-1 error on (probs, labels); ties go to the smaller tau."""
    errors = {tau: topk_errors(prior_correct(probs, prior, tau), labels, (1,))[1] for tau in grid}
    best = min(grid, key=lambda t: (errors[t], t))
    return best, errors
