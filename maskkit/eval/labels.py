"""What an evaluation can score per label: known, positive, negative and unknown (NaN) counts.

Labels are 1.0 / 0.0 / NaN (unknown, left out of that label's metrics). How many samples a label
loses to "unknown", and whether what is left holds both classes, depends on the adapter's label
policies (``uncertain=``, ``blank=`` for CheXpert-style labels): both are reported, and a label
left with one class raises a :class:`LabelCoverageWarning` naming it.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import LabelCoverageWarning  # noqa: F401  (defined with maskkit's other warnings: no numpy import)


def label_coverage(y: np.ndarray, label_names) -> dict[str, dict[str, int]]:
    """Per label ``{"n_known", "n_pos", "n_neg", "n_unknown"}`` of labels ``y`` ``[M, K]`` (NaN = unknown).

    Raises :class:`~maskkit.errors.MaskkitError` (a ``ValueError``; one line) when ``y`` is not
    ``[M, len(label_names)]`` or holds values other than 0, 1 and NaN. Tables are checked when they
    are loaded (``maskkit.data.records.check_label_values``); this guards arrays passed in directly.
    """
    from ..errors import MaskkitError

    y = np.asarray(y, dtype=np.float64)
    names = list(label_names)
    if y.ndim != 2 or y.shape[1] != len(names):
        raise MaskkitError(f"labels: expected shape [M, {len(names)}] for {len(names)} label names, got {list(y.shape)}")
    known = ~np.isnan(y)
    bad = known & (y != 0) & (y != 1)
    if bad.any():
        m, k = map(int, np.argwhere(bad)[0])
        raise MaskkitError(f"labels: sample {m}, label '{names[k]}' is {y[m, k]}; expected 1, 0 or NaN (unknown)")
    out = {}
    for k, name in enumerate(names):
        n_known, n_pos = int(known[:, k].sum()), int(np.nansum(y[:, k]))
        out[name] = {"n_known": n_known, "n_pos": n_pos, "n_neg": n_known - n_pos, "n_unknown": int(len(y) - n_known)}
    return out


def undefined_reason(n_pos: int, n_neg: int) -> str | None:
    """Why a label cannot be scored among the evaluated samples, or None when it can: the one rule
    (zero-shot's undefined labels, PadChest's "neither" classes) - at least one positive and at
    least one negative known sample, else ``"no positive image"`` / ``"no negative image"`` (AUC,
    F1 and the rank metrics are undefined with one class)."""
    if not n_pos:
        return "no positive image"
    if not n_neg:
        return "no negative image"
    return None


def one_class_warnings(coverage: dict[str, dict[str, int]], what: str, warn: bool = True) -> list[str]:
    """One line per label whose known samples hold one class (or none), emitted as
    :class:`LabelCoverageWarning` when ``warn``; ``what`` names the evaluation ("zero-shot")."""
    lines = []
    for name, c in coverage.items():
        if undefined_reason(c["n_pos"], c["n_neg"]) is None:
            continue
        held = "no known sample" if not c["n_known"] else (
            f"only {'positives' if c['n_pos'] else 'negatives'} ({c['n_pos']} positive, {c['n_neg']} negative)")
        lines.append(f"{what}: label '{name}' has {held} of {c['n_known'] + c['n_unknown']} samples, "
                     f"{c['n_unknown']} left out as unknown; its AUC/F1 are undefined (check the label "
                     f"policies, e.g. data.options blank= / uncertain=)")
    if warn:
        for line in lines:
            warnings.warn(line, LabelCoverageWarning, stacklevel=3)
    return lines
