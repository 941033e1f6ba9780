"""One tie rule for every rank metric of maskkit.eval (maskkit.eval.ties, docs/assumptions.md A60):
the expected value over a uniformly random tie-break, checked against every order written out."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from maskkit.eval.ties import decision_weights, expected_rank, hit_probability
from maskkit.eval.zeroshot import point_metrics, predictions


def _orders(above, tied, relevant):
    """The rank of the first relevant item in each distinct order of the tied items."""
    return [1 + above + order.index(1) for order in set(itertools.permutations([0] * tied + [1] * relevant))]


@pytest.mark.parametrize("above, tied, relevant", [(a, t, r) for a in (0, 2) for t in range(5) for r in (1, 2, 3)])
def test_hit_probability_and_expected_rank_are_the_mean_over_every_order(above, tied, relevant):
    ranks = np.array(_orders(above, tied, relevant))
    for k in range(1, 9):
        assert hit_probability(above, tied, relevant, k) == pytest.approx(np.mean(ranks <= k))
    assert expected_rank(above, tied, relevant) == pytest.approx(ranks.mean())


def test_vectorised_over_queries_and_bad_counts():
    got = hit_probability(np.array([0, 1, 2, 0]), np.array([3, 3, 3, 0]), np.array([1, 1, 2, 1]), 2)
    assert got.tolist() == pytest.approx([0.5, 0.25, 0.0, 1.0])  # (K - above) / (tied + 1) for one relevant item
    with pytest.raises(ValueError, match="relevant >= 1"):
        hit_probability(0, 1, 0, 1)


def test_a_tied_zero_shot_decision_is_half_a_yes():
    assert decision_weights(np.array([0.2, 0.5, 0.7]), 0.5).tolist() == [0.0, 0.5, 1.0]
    # y 1 0 1 0; p .5 .5 .9 .1: expected counts TP 1.5, FP .5, FN .5, TN 1.5 -> ACC 3/4, F1 3/(3 + 1) = 3/4
    # (p >= 0.5 would say TP 2, FP 1: F1 0.8)
    m = point_metrics(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.9, 0.1]))
    assert m["acc"] == pytest.approx(0.75) and m["f1"] == pytest.approx(0.75) and m["auc"] == pytest.approx(0.875)
    # a model that cannot tell the prompts apart scores chance: ACC 1/2, AUC 1/2, F1 of the expected counts
    # (TP .5, FP 1.5, FN .5) = 1/3 - not the F1 0.4 and ACC 0.25 of calling everything positive
    flat = point_metrics(np.array([1, 0, 0, 0]), np.full(4, 0.5))
    assert flat == pytest.approx({"auc": 0.5, "f1": 1 / 3, "acc": 0.5})


def test_no_finding_absence_with_tied_findings():
    labels = ["Pneumothorax", "Cardiomegaly", "No Finding"]
    prob = np.array([[0.5, 0.2, 0.4], [0.5, 0.5, 0.25], [0.7, 0.5, 0.15], [0.1, 0.2, 0.72]])
    # none decided present: (1 - 1/2)(1 - 0), (1/2)(1/2), 0 (one finding is present), 1
    assert predictions(prob, labels)[:, 2].tolist() == [0.5, 0.25, 0.0, 1.0]
