"""The probability correction: divide by the training prior (post-hoc logit adjustment).

Train is long-tailed, val and test are uniform, so a model trained on train over-predicts the
frequent classes. p'_c = p_c / prior_c ** tau, renormalised; tau = 1 is the original's division
by the class counts, tau = 0 is the identity. Equivalently argmax(log p_c - tau * log prior_c)
(Menon et al., ICLR 2021).
"""
import numpy as np

from .errors import UserError
from .metrics import topk, topk_errors

TAU_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
LOG_NORMAL = -float(np.log(np.finfo(np.float64).tiny))  # 708.4: prior ** tau stays a normal number while tau * |log prior| <= this


def prior_correct(probs, prior, tau=1.0):
    """Corrected probabilities (N, K) for probabilities `probs` (N, K) and a prior (K,).

    The prior need not sum to 1: a constant factor cancels in the renormalisation. Computed in
    log space (`prior ** tau` would overflow); a non-finite log score (a tau so large that
    tau * log prior overflows, a NaN probability) is refused: its ranking would be the id order.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if tau == 0:
        return probs
    check_tau(prior, tau)
    logp = np.log(np.clip(probs, 1e-300, None)) - tau * np.log(np.asarray(prior, dtype=np.float64))
    if not np.isfinite(logp).all():
        raise UserError(f"prior correction with tau {tau:g}: non-finite scores (a NaN probability?)")
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def check_tau(prior, tau):
    """UserError unless prior ** tau is a normal float64 number (not 0, not a subnormal, not inf) for
    every class: past that, tau * log prior swamps log p in float64 and the ranking degrades to the
    id order (--tau 1e308). Call it at start. On iNat 2019 (rarest prior 16 / 265,213) tau may reach 73."""
    logs = np.log(np.asarray(prior, dtype=np.float64))
    worst = float(np.max(np.abs(logs)))
    with np.errstate(over="ignore", invalid="ignore"):
        exponent = tau * worst
    if not np.isfinite(exponent) or exponent > LOG_NORMAL:
        most = LOG_NORMAL / worst if worst > 0 else float("inf")
        raise UserError(f"--tau {tau:g}: prior ** tau leaves float64's normal range for the rarest class "
                        f"(prior {float(np.min(prior)):.3g}); at most {most:.3g} on this train split")


def choose_tau(probs, labels, prior, grid=TAU_GRID):
    """The tau of `grid` with the lowest top-1 error on (probs, labels); ties go to the smaller tau."""
    errors = {tau: topk_errors(prior_correct(probs, prior, tau), labels, (1,))[1] for tau in grid}
    best = min(grid, key=lambda t: (errors[t], t))
    return best, errors


class TopK:
    """What prediction keeps of each image (test.py's submission, predict.py's rows): its k best
    classes after the correction at `tau` ("corrected", (N, k) class indices, best first) with their
    corrected probabilities ("probability", normalised over all classes), and its k best without
    the correction ("uncorrected", for the tables). Memory does not grow with N x K."""

    def __init__(self, prior, tau, k=5):
        self.prior, self.tau, self.k = prior, tau, k

    def __call__(self, probs):
        corrected = prior_correct(probs, self.prior, self.tau)
        top = topk(corrected, self.k)
        return {"corrected": top, "probability": np.take_along_axis(corrected, top, axis=1), "uncorrected": topk(probs, self.k)}
