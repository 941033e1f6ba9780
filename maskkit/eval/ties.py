"""How every rank- or argmax-based metric of ``maskkit.eval`` scores ties: the expected value over
a uniformly random tie-break (docs/assumptions.md, A60).

A score that picks "the best" item (the pointing game's maximal patch, retrieval's top K, a
classifier's closer prompt) is defined for distinct scores only; with ties it needs a rule.
maskkit's rule, everywhere: **the metric's expected value when the tied items are put in a
uniformly random order** (all orders equally likely), computed exactly, with no random draw.

- A query has ``above`` irrelevant candidates scoring strictly higher than its best relevant one,
  and at that best score ``tied`` irrelevant and ``relevant`` (>= 1) relevant candidates. Among the
  ``tied + relevant`` items the number ``X`` of irrelevant ones that come before the first relevant
  one has ``P(X >= j) = C(tied, j) / C(tied + relevant, j)``; the rank of the first relevant item
  is ``1 + above + X``.
- **Hit within K** (retrieval R@K; the pointing game is R@1 over patches):
  ``P(1 + above + X <= K)`` (:func:`hit_probability`). One relevant item (``relevant = 1``):
  ``clip((K - above) / (tied + 1), 0, 1)``. The pointing game: ``relevant / (tied + relevant)``,
  the share of the tied maximal patches that touch the region.
- **Rank** (median and mean rank): the expected rank ``1 + above + tied / (relevant + 1)``
  (:func:`expected_rank`); with one relevant item, the mid-rank ``1 + above + tied / 2``.
- **AUC** (zero-shot, linear probe): scikit-learn's ``roc_auc_score`` counts a tied positive-negative
  pair as 1/2, the Mann-Whitney convention - the same expectation.
- **A two-way decision** (zero-shot F1/ACC: is the positive prompt closer than the negative one?):
  a tie (``p == 0.5``) is half a positive decision (:func:`decision_weights`).

So an uninformative score (a constant map or matrix) scores exactly chance - the share of the
tied maximal patches inside the lesion, ``K / n`` for R@K - and never 1 (an "any tied item
counts" rule) or 0 (a "ties count against" rule, which puts a constant map below a random one).
"""

from __future__ import annotations

import numpy as np

#: The name of the convention, written into every result that ranks (``"ties"`` in its JSON).
TIES = "expected"


def _counts(above, tied, relevant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, t, r = (np.asarray(x, dtype=np.float64) for x in (above, tied, relevant))
    if (a < 0).any() or (t < 0).any() or (r < 1).any():
        raise ValueError("ties: expected above >= 0, tied >= 0 and relevant >= 1")
    return a, t, r


def hit_probability(above, tied, relevant, k: int) -> np.ndarray:
    """Probability (float64, the shape of the broadcast inputs) that the first relevant candidate is
    within the top ``k`` when ties are broken uniformly at random: ``above`` irrelevant candidates
    strictly ahead, ``tied`` irrelevant and ``relevant`` (>= 1) relevant candidates at the best
    relevant score. Raises ``ValueError`` for a negative count or ``relevant < 1``."""
    a, t, r = _counts(above, tied, relevant)
    j = k - a  # irrelevant tied items that may come first and still leave a hit
    jj = np.clip(j, 0, t)
    # P(X >= j) = C(t, j) / C(t + r, j) = prod_{i < j} (t - i) / (t + r - i): the first j tied items all irrelevant
    tail = np.ones(np.broadcast(a, t, r).shape)
    for i in range(int(min(k, jj.max(initial=0)))):  # positions, not samples: every query at once
        tail = tail * np.where(i < jj, (t - i) / np.maximum(t + r - i, 1.0), 1.0)
    return np.where(j <= 0, 0.0, np.where(j > t, 1.0, 1.0 - tail))


def expected_rank(above, tied, relevant) -> np.ndarray:
    """Expected rank (float64, 1 = best) of the first relevant candidate under a uniformly random
    tie-break: ``1 + above + tied / (relevant + 1)``."""
    a, t, r = _counts(above, tied, relevant)
    return 1.0 + a + t / (r + 1.0)


def decision_weights(prob: np.ndarray, threshold: float) -> np.ndarray:
    """A two-way decision as the probability of deciding "positive" (float64, the shape of
    ``prob``): 1 above ``threshold``, 0 below, 1/2 exactly at it (a tie between the two options)."""
    p = np.asarray(prob, dtype=np.float64)
    return np.where(p > threshold, 1.0, np.where(p < threshold, 0.0, 0.5))
