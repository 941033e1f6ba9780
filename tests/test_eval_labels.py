"""Per-label unknown counts and one-class warnings in evaluation, under the CheXpert label policies."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from rich.console import Console

from maskkit.data.records import CHEXPERT_LABELS, chexpert
from maskkit.eval.labels import LabelCoverageWarning, label_coverage, one_class_warnings
from maskkit.eval.zeroshot import score

HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS)


def _csv(tmp_path):
    """16 images in CheXpert's layout: No Finding is 1 or blank (as in the real train.csv), the
    findings 1 / -1 / blank; images 0-3 are normal, 4-15 have 1-2 findings each."""
    rows = []
    for i in range(16):
        cells = [""] * 14
        if i < 4:
            cells[0] = "1.0"
        else:
            cells[1 + i % 13] = "1.0"
            cells[1 + (i + 5) % 13] = "-1.0" if i % 3 else ""
        rows.append(f"CheXpert-v1.0/valid/patient{i}/study1/view1_frontal.jpg,F,50,Frontal,PA," + ",".join(cells))
    (tmp_path / "valid.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")


def _labels(table):
    return np.array([[r.labels[k] for k in CHEXPERT_LABELS] for r in table.records])


def _expected_positives(uncertain_is_positive: bool) -> list[int]:
    """Positives per label by the construction of ``_csv``, counted independently of the adapter."""
    pos = [4] + [0] * 13
    for i in range(4, 16):
        pos[1 + i % 13] += 1
        if i % 3 and uncertain_is_positive:
            pos[1 + (i + 5) % 13] += 1
    return pos


def test_default_blank_policy_scores_no_finding_on_every_image(tmp_path):
    _csv(tmp_path)
    y = _labels(chexpert(tmp_path, csv_name="valid.csv"))  # uncertain=ones, blank=negative
    prob = np.random.default_rng(0).random(y.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelCoverageWarning)  # no label is left one-class
        r = score(y, prob, CHEXPERT_LABELS, n_boot=0)
    assert r.per_label["No Finding"] is not None and r.per_label["No Finding"]["n"] == 16
    assert r.per_label["No Finding"]["n_pos"] == 4 and r.undefined == [] and r.warnings == []
    # blank = negative and U-Ones: nothing is unknown, every label is scored on all 16 images
    assert [r.coverage[k]["n_pos"] for k in CHEXPERT_LABELS] == _expected_positives(True)
    assert all(c["n_unknown"] == 0 and c["n_known"] == 16 for c in r.coverage.values())


def test_uncertain_ignore_counts_unknowns_per_label(tmp_path):
    _csv(tmp_path)
    y = _labels(chexpert(tmp_path, csv_name="valid.csv", uncertain="ignore"))
    r = score(y, np.full(y.shape, 0.5), CHEXPERT_LABELS, n_boot=0)
    unknown = [0] * 14
    for i in range(4, 16):
        unknown[1 + (i + 5) % 13] += bool(i % 3)
    assert [r.coverage[k]["n_unknown"] for k in CHEXPERT_LABELS] == unknown and sum(unknown) == 8
    assert [r.coverage[k]["n_pos"] for k in CHEXPERT_LABELS] == _expected_positives(False)


def test_blank_unknown_leaves_no_finding_one_class_and_says_so(tmp_path):
    _csv(tmp_path)
    y = _labels(chexpert(tmp_path, csv_name="valid.csv", blank="unknown", uncertain="ignore"))
    prob = np.random.default_rng(0).random(y.shape)
    with pytest.warns(LabelCoverageWarning) as record:
        r = score(y, prob, CHEXPERT_LABELS, n_boot=0)
    assert len(record) == 14 and str(record[0].message).startswith(
        "zero-shot: label 'No Finding' has only positives (4 positive, 0 negative) of 16 samples, 12 left out as unknown")
    assert r.per_label["No Finding"] is None and "No Finding" in r.undefined
    assert r.coverage["No Finding"] == {"n_known": 4, "n_pos": 4, "n_neg": 0, "n_unknown": 12}
    # every finding: only its 1.0 cells are known (blank and -1 unknown) -> one class, undefined
    assert set(r.undefined) == set(CHEXPERT_LABELS) and r.mean("auc") is None
    assert len(r.warnings) == 14
    out = io.StringIO()
    Console(file=out, width=200).print(r.table())
    text = out.getvalue()
    assert "unknown" in text.splitlines()[2] or "unknown" in text  # the column header
    row = next(line for line in text.splitlines() if line.strip("│ ").startswith("No Finding"))
    assert "4/4" in row and "12" in row and "undefined" in row
    assert "warning: zero-shot: label 'No Finding'" in text
    assert r.to_json()["coverage"]["No Finding"]["n_unknown"] == 12


def test_label_coverage_counts_and_errors():
    y = np.array([[1, 0, np.nan], [0, np.nan, np.nan], [1, 0, np.nan]])
    cov = label_coverage(y, ["a", "b", "c"])
    assert cov == {"a": {"n_known": 3, "n_pos": 2, "n_neg": 1, "n_unknown": 0},
                   "b": {"n_known": 2, "n_pos": 0, "n_neg": 2, "n_unknown": 1},
                   "c": {"n_known": 0, "n_pos": 0, "n_neg": 0, "n_unknown": 3}}
    lines = one_class_warnings(cov, "probe test split", warn=False)
    assert lines[0].startswith("probe test split: label 'b' has only negatives (0 positive, 2 negative) of 3 samples, 1 left out")
    assert lines[1].startswith("probe test split: label 'c' has no known sample of 3 samples, 3 left out as unknown")
    with pytest.raises(ValueError, match=r"sample 1, label 'b' is -1.0; expected 1, 0 or NaN"):
        label_coverage(np.array([[1, 0], [0, -1]]), ["a", "b"])
    with pytest.raises(ValueError, match=r"expected shape \[M, 3\] for 3 label names, got \[2, 2\]"):
        label_coverage(np.zeros((2, 2)), ["a", "b", "c"])
