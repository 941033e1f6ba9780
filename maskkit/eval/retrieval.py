"""Image-report retrieval: Recall@K, median and mean rank, with bootstrap intervals.

Input: a similarity matrix ``sim`` ``[n_images, n_reports]`` (cosine similarities, or any score
where higher means closer) and ``image_report`` ``[n_images]``: the column of each image's own
report. How the columns are made from records is :func:`report_groups`:

- **One column per distinct report text.** The images of one study share its report, so the
  study's report is one column and each of its images is a query whose hit is that column.
  Reports are keyed by their text (whitespace collapsed), not by study id: two studies whose
  reports are word for word the same ("No acute cardiopulmonary process.") are one column,
  because no model can tell identical texts apart; as separate columns they would tie and cost
  each other a rank. CXR-CLIP deduplicates the same way (kakaobrain/cxr-clip,
  ``cxrclip/evaluator.py``, ``retrieval_image_text``: identical texts become one candidate).
- **Image -> report:** the rank of the image's report among all columns.
- **Report -> image:** the rank of the *first* relevant image - any image whose report is this
  column (every image of the study) - among all images: a hit at K when any of them is in the
  top K. Other relevant images do not count against it. Columns with no image (distractor
  reports) are candidates for image -> report and are not report -> image queries.
- **Ties: the expected value over a uniformly random tie-break** (:mod:`maskkit.eval.ties`, the
  convention of every rank metric in ``maskkit.eval``): a query with ``above`` other candidates
  (irrelevant ones, for report -> image) scoring strictly higher than its best relevant one and
  ``tied`` scoring the same scores R@K = the probability that a random order of the tied items
  leaves its first relevant one within K, and its rank is the expected rank
  ``1 + above + tied / (relevant + 1)`` (``relevant``: the relevant candidates at that score; the
  mid-rank ``1 + above + tied / 2`` for one). A constant similarity matrix therefore scores chance
  (R@K = K / n), neither R@1 = 1 by the accident of a sort order (``argsort``-based scorers such
  as open_clip's and CXR-CLIP's break ties by position) nor the worst rank.
- **Metrics:** R@K = share of queries with rank <= K (a fraction, not a percentage; the mean hit
  probability where ties); median rank (``np.median`` of the expected ranks: the mean of the two
  middle ones for an even count, where open_clip floors it) and mean rank.
- **Intervals:** percentile 95% bootstrap (:mod:`maskkit.eval.bootstrap`, the zero-shot
  convention) over **reports**, the independent units: a resample draws report columns (those
  with images) with replacement and takes every image of each, so the images of one study stay
  together (a cluster bootstrap). Ranks are computed once on the full gallery; resamples reweight
  the queries.

Everything is vectorised over queries (no per-sample Python loop); large matrices are processed in
row blocks. See docs/eval.md ("Retrieval").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import MaskkitError
from .ties import TIES, expected_rank, hit_probability

KS = (1, 5, 10)
DIRECTIONS = ("image_to_report", "report_to_image")
_BLOCK = 1 << 22  # matrix cells per block (bounds the temporary boolean arrays)


def report_groups(reports: Sequence[str | None], ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(distinct report texts, ``image_report`` ``[n_images]`` int64) from one report per image.

    Texts are compared with whitespace collapsed; columns are in order of first appearance. An
    image without a report (None, or only whitespace) is a one-line :class:`MaskkitError` naming
    it (``ids[i]`` when given, else its position): an image-only record cannot be a retrieval query.
    """
    texts: list[str] = []
    column: dict[str, int] = {}
    out = np.empty(len(reports), dtype=np.int64)
    for i, rep in enumerate(reports):  # building the index is a dict pass, not a metric
        key = " ".join(rep.split()) if isinstance(rep, str) else ""
        if not key:
            who = f"'{ids[i]}'" if ids is not None else f"{i}"
            raise MaskkitError(f"retrieval: image {who} has no report; retrieval needs paired images "
                               f"(leave image-only records out)")
        if key not in column:
            column[key] = len(texts)
            texts.append(key)
        out[i] = column[key]
    return texts, out


def _check(sim, image_report) -> tuple[np.ndarray, np.ndarray]:
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] < 1 or sim.shape[1] < 1:
        raise MaskkitError(f"retrieval: similarity matrix must be [n_images, n_reports] with at least one of each, "
                           f"got shape {list(sim.shape)}")
    bad = ~np.isfinite(sim)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise MaskkitError(f"retrieval: similarity [{i}, {j}] is {sim[i, j]}; expected a finite number "
                           f"({int(bad.sum())} entries are not)")
    r = np.asarray(image_report)
    if r.shape != (sim.shape[0],) or not np.issubdtype(r.dtype, np.integer):
        raise MaskkitError(f"retrieval: image_report must be {sim.shape[0]} integer column indices (one per image), "
                           f"got {r.dtype} array of shape {list(r.shape)}")
    out = (r < 0) | (r >= sim.shape[1])
    if out.any():
        i = int(np.argmax(out))
        raise MaskkitError(f"retrieval: image {i}'s report column is {int(r[i])}; expected 0..{sim.shape[1] - 1}")
    return sim, r.astype(np.int64)


def image_to_report_counts(sim, image_report) -> np.ndarray:
    """``[n_images, 3]`` int64 per image query: (report columns scoring strictly higher than the
    image's own, other columns scoring the same, 1) - the ``(above, tied, relevant)`` counts of
    :mod:`maskkit.eval.ties`."""
    sim, r = _check(sim, image_report)
    n, m = sim.shape
    own = sim[np.arange(n), r]
    out = np.ones((n, 3), dtype=np.int64)
    step = max(1, _BLOCK // m)
    for s in range(0, n, step):  # row blocks of the matrix, not single samples
        block, o = sim[s:s + step], own[s:s + step, None]
        out[s:s + step, 0] = (block > o).sum(1)
        out[s:s + step, 1] = (block == o).sum(1) - 1  # the own column is not a rival
    return out


def image_to_report_ranks(sim, image_report) -> np.ndarray:
    """``[n_images]`` float64 expected rank (1 = best) of each image's own report among all report
    columns; reports scoring the same as the image's own are a tie broken at random (the mid-rank)."""
    c = image_to_report_counts(sim, image_report)
    return expected_rank(c[:, 0], c[:, 1], c[:, 2])


def report_to_image_counts(sim, image_report) -> tuple[np.ndarray, np.ndarray]:
    """(query columns ``[q]``, ``[q, 3]`` int64 counts): for each report column with at least one
    image, (irrelevant images scoring strictly higher than its best relevant image, irrelevant
    images scoring the same, relevant images scoring the same) - the ``(above, tied, relevant)``
    counts of :mod:`maskkit.eval.ties`."""
    sim, r = _check(sim, image_report)
    n, m = sim.shape
    queries = np.flatnonzero(np.bincount(r, minlength=m) > 0)
    out = np.empty((len(queries), 3), dtype=np.int64)
    st = sim.T  # [m, n]
    step = max(1, _BLOCK // n)
    for s in range(0, len(queries), step):
        q = queries[s:s + step]
        rel = r[None, :] == q[:, None]  # [b, n] relevant images of each query column
        scores = st[q]
        best = np.where(rel, scores, -np.inf).max(1)[:, None]
        at = scores == best
        out[s:s + step, 0] = ((scores > best) & ~rel).sum(1)
        out[s:s + step, 1] = (at & ~rel).sum(1)
        out[s:s + step, 2] = (at & rel).sum(1)
    return queries, out


def report_to_image_ranks(sim, image_report) -> tuple[np.ndarray, np.ndarray]:
    """(query columns ``[q]``, their expected ranks ``[q]`` float64): for each report column with at
    least one image, the rank of its best-scoring relevant image among the irrelevant images, a tie
    broken at random (:mod:`maskkit.eval.ties`)."""
    queries, c = report_to_image_counts(sim, image_report)
    return queries, expected_rank(c[:, 0], c[:, 1], c[:, 2])


def _hits(counts: np.ndarray, ks) -> dict[int, np.ndarray]:
    """``{k: [q] float64}``: each query's probability of a hit within ``k``."""
    return {k: hit_probability(counts[:, 0], counts[:, 1], counts[:, 2], k) for k in ks}


def _summary(ranks: np.ndarray, hits: dict[int, np.ndarray]) -> dict[str, float]:
    out = {f"R@{k}": float(np.mean(h)) for k, h in hits.items()}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    return out


@dataclass
class RetrievalResult:
    """Retrieval metrics and the per-query ranks behind them.

    ``image_ranks`` ``[n_images]`` float64: each image's expected rank of its report;
    ``report_queries`` ``[q]`` and ``report_ranks`` ``[q]`` float64: the report columns that have
    images and the expected rank of their first image (ties: :mod:`maskkit.eval.ties`);
    ``image_counts`` ``[n_images, 3]`` and ``report_counts`` ``[q, 3]``: the ``(above, tied,
    relevant)`` counts behind them.
    ``point``/``ci``: ``{direction: {metric: value | (lo, hi)}}`` (``ci`` empty when ``n_boot`` is 0).
    """

    n_images: int
    n_reports: int
    ks: tuple[int, ...]
    image_ranks: np.ndarray
    report_queries: np.ndarray
    report_ranks: np.ndarray
    point: dict[str, dict[str, float]]
    ci: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    n_boot: int = 0
    seed: int = 0
    image_counts: np.ndarray | None = None
    report_counts: np.ndarray | None = None

    def metrics(self) -> dict[str, float]:
        """One flat dict of floats (open_clip's naming): ``image_to_report_R@1``, ...,
        ``report_to_image_median_rank``, and ``<name>_ci_lo`` / ``<name>_ci_hi`` per interval."""
        out: dict[str, float] = {}
        for d in DIRECTIONS:
            for k, v in self.point[d].items():
                out[f"{d}_{k}"] = v
                if d in self.ci and k in self.ci[d]:
                    out[f"{d}_{k}_ci_lo"], out[f"{d}_{k}_ci_hi"] = self.ci[d][k]
        return out

    def to_json(self) -> dict:
        return {"n_images": self.n_images, "n_reports": self.n_reports, "n_report_queries": int(len(self.report_queries)),
                "ks": list(self.ks), "ties": TIES, "n_boot": self.n_boot, "seed": self.seed,
                "bootstrap_unit": "report", "metrics": self.metrics(),
                "image_ranks": self.image_ranks.tolist(),
                "report_ranks": dict(zip(map(int, self.report_queries), map(float, self.report_ranks)))}

    def table(self, title: str | None = None):
        from rich.table import Table

        ci = f"95% bootstrap CI over reports, {self.n_boot} resamples" if self.n_boot else "no intervals"
        t = Table(title=f"{title or f'retrieval: {self.n_images} images, {self.n_reports} reports'} ({ci})")
        cols = [f"R@{k}" for k in self.ks] + ["median_rank", "mean_rank"]
        t.add_column("direction")
        for c in cols:
            t.add_column(c.replace("_", " "), justify="right")
        for d in DIRECTIONS:
            cells = []
            for c in cols:
                v, iv = self.point[d][c], self.ci.get(d, {}).get(c)
                fmt = "{:.3f}" if c.startswith("R@") else "{:.1f}"
                cells.append(fmt.format(v) + (f" [{fmt.format(iv[0])}, {fmt.format(iv[1])}]" if iv else ""))
            t.add_row(d.replace("_", " "), *cells)
        t.caption = ("ties: expected value over a random tie-break; report -> image: a hit when any image of the report's "
                     f"study is within K ({len(self.report_queries)} report queries)")
        return t


def retrieval_metrics(sim, image_report, ks: Sequence[int] = KS, n_boot: int = 1000, seed: int = 0) -> RetrievalResult:
    """Image -> report and report -> image R@K, median and mean rank of ``sim`` ``[n_images, n_reports]``
    where image ``i``'s report is column ``image_report[i]`` (:func:`report_groups` builds both
    from records), with percentile 95% intervals from ``n_boot`` resamples of the report columns
    (seeded ``numpy`` Generator; 0: no intervals). Scoring rules: the module docstring.

    Raises :class:`MaskkitError` (one line) for a matrix that is not 2-D or holds a non-finite
    value, an ``image_report`` of the wrong length, type or range, or ``ks`` not positive integers.
    """
    ks = tuple(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise MaskkitError(f"retrieval: ks must be positive integers, got {list(ks)}")
    if n_boot < 0:
        raise MaskkitError(f"retrieval: n_boot must be >= 0, got {n_boot}")
    sim, r = _check(sim, image_report)
    n, m = sim.shape
    ic = image_to_report_counts(sim, r)
    queries, rc = report_to_image_counts(sim, r)
    i2r, r2i = expected_rank(*ic.T), expected_rank(*rc.T)
    i_hits, r_hits = _hits(ic, ks), _hits(rc, ks)
    point = {"image_to_report": _summary(i2r, i_hits), "report_to_image": _summary(r2i, r_hits)}
    ci = _bootstrap(i2r, i_hits, r, queries, r2i, r_hits, ks, n_boot, seed) if n_boot else {}
    return RetrievalResult(n, m, ks, i2r, queries, r2i, point, ci, int(n_boot), int(seed), ic, rc)


def _bootstrap(i2r, i_hits, r, queries, r2i, r_hits, ks, n_boot: int, seed: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Cluster bootstrap over the report columns that have images (see the module docstring)."""
    from .bootstrap import bootstrap_indices, percentile_interval, resample_counts, weighted_median

    g = len(queries)
    group = np.searchsorted(queries, r)  # each image's position among the query columns
    stats: dict[str, dict[str, list[np.ndarray]]] = {d: {} for d in DIRECTIONS}
    idx = bootstrap_indices(g, n_boot, seed)
    step = max(1, _BLOCK // max(len(r), g))
    for s in range(0, n_boot, step):  # blocks of resamples
        w = resample_counts(idx[s:s + step], g).astype(np.float64)  # [b, g] draws of each report column
        w_img = w[:, group]  # [b, n_images]: an image counts as often as its report column is drawn
        n_img, n_rep = w_img.sum(1), w.sum(1)
        for d, ranks, hits, weights, total in (("image_to_report", i2r, i_hits, w_img, n_img),
                                               ("report_to_image", r2i, r_hits, w, n_rep)):
            vals = {f"R@{k}": weights @ hits[k] / total for k in ks}
            vals["median_rank"] = weighted_median(ranks, weights.astype(np.int64))
            vals["mean_rank"] = weights @ ranks / total
            for key, v in vals.items():
                stats[d].setdefault(key, []).append(v)
    return {d: {key: percentile_interval(np.concatenate(v)) for key, v in per.items()} for d, per in stats.items()}
