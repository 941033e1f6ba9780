"""The one bootstrap every maskkit evaluation uses: percentile intervals over resampled units.

Convention (set by the zero-shot evaluation, :func:`maskkit.eval.zeroshot.bootstrap_ci`): a
``numpy.random.default_rng(seed)`` Generator owned by the call (never the global RNG) draws each
resample as ``rng.integers(0, n, n)`` - ``n`` units with replacement - one resample after the
other, and a 95% interval is the 2.5th and 97.5th percentiles (``np.percentile``) of the
statistic over the resamples. :func:`bootstrap_indices` draws exactly that sequence, so any
evaluation built on it gives the intervals the zero-shot one would for the same seed.
"""

from __future__ import annotations

import numpy as np

PERCENTILES = (2.5, 97.5)  # a 95% interval (written as percentiles: 100 * (1 - 0.95) / 2 is not 2.5 in floating point)


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` int64 indices into ``n`` units, one resample (with replacement) per row.

    Row ``b`` is the ``b``-th ``rng.integers(0, n, n)`` of ``default_rng(seed)``: one draw per
    resample, in order (drawing all rows in one call would give other numbers). Raises
    ``ValueError`` for ``n < 1`` or ``n_boot < 0``.
    """
    if n < 1 or n_boot < 0:
        raise ValueError(f"bootstrap: need n >= 1 units and n_boot >= 0 resamples, got n={n}, n_boot={n_boot}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n), dtype=np.int64)
    for b in range(n_boot):  # one resample per draw (the convention), not one sample per iteration
        out[b] = rng.integers(0, n, n)
    return out


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """``[n_boot, n]`` how many times each unit is drawn in each resample of ``indices`` ``[n_boot, n']``."""
    n_boot = indices.shape[0]
    flat = (indices + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)


def percentile_interval(values, percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """(lower, upper) percentile interval (default 95%: :data:`PERCENTILES`) of the resampled
    statistic ``values`` (1-D), or ``(nan, nan)`` when there are none; NaN resamples (an undefined
    statistic) are left out."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return float("nan"), float("nan")
    return float(np.percentile(v, percentiles[0])), float(np.percentile(v, percentiles[1]))


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Median of ``values`` ``[n]`` repeated ``weights[b]`` times, per row of ``weights`` ``[B, n]``
    (non-negative integers, at least one positive per row): ``np.median`` of the expanded array
    (the mean of the two middle values for an even count), without expanding it. ``[B]`` float64.
    """
    order = np.argsort(values, kind="stable")
    v = np.asarray(values, dtype=np.float64)[order]
    c = np.cumsum(np.asarray(weights)[:, order], axis=1)
    total = c[:, -1]
    lo = (c <= ((total - 1) // 2)[:, None]).sum(1)  # first position whose cumulative count passes the lower middle
    hi = (c <= (total // 2)[:, None]).sum(1)
    return (v[lo] + v[hi]) / 2
