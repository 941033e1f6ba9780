"""The embedded phantom dataset: determinism, masks that match the findings, reports."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from maskkit.data.phantoms import FINDINGS, PhantomGenerator


def digest(p) -> str:
    h = hashlib.sha256(p.image.tobytes())
    for k in sorted(p.masks):
        h.update(k.encode() + p.masks[k].tobytes())
    h.update((p.report or "").encode())
    return h.hexdigest()


def test_same_seed_same_bytes_any_order():
    a = PhantomGenerator(seed=7, size=64)
    b = PhantomGenerator(seed=7, size=64)
    assert [digest(a[i]) for i in range(20)] == [digest(b[i]) for i in reversed(range(20))][::-1]
    c = PhantomGenerator(seed=8, size=64)
    assert digest(a[0]) != digest(c[0])


def test_masks_follow_findings_and_negations():
    g = PhantomGenerator(seed=0, size=96)
    n_paired = n_neg = 0
    for i in range(300):
        p = g[i]
        present = {f["finding"] for f in p.findings}
        assert set(p.masks) == present
        for name, m in p.masks.items():
            assert m.dtype == bool and m.any(), f"{i}: {name} mask is empty"
            assert p.labels[name] == 1.0
        for name in FINDINGS:
            if name not in present:
                assert p.labels[name] == 0.0 and name not in p.masks
        assert p.labels["No Finding"] == float(not present)
        assert p.image.dtype == np.float32 and 0 <= p.image.min() and p.image.max() <= 1
        if p.report is None:
            continue
        n_paired += 1
        low = p.report.lower()
        for f in p.findings:
            if f["side"] and f["finding"] != "Support Devices":
                assert f["side"] in low, (i, f, p.report)
        # negated findings ("no pneumothorax") are never present and have no mask
        for name, key in (("Pneumothorax", "no pneumothorax"), ("Pleural Effusion", "no pleural effusion"), ("Cardiomegaly", "no cardiomegaly")):
            if key in low:
                n_neg += 1
                assert name not in present and name not in p.masks
    assert 150 < n_paired < 300 and n_neg > 50  # some samples are image-only


def test_lesions_are_where_the_report_says():
    g = PhantomGenerator(seed=1, size=96)
    checked = 0
    for i in range(200):
        p = g[i]
        for f in p.findings:
            if f["finding"] in ("Pleural Effusion", "Pneumothorax", "Lung Lesion"):
                xs = np.nonzero(p.masks[f["finding"]])[1].mean() / 96
                # radiological convention: the patient's right is on the image's left
                assert (xs < 0.5) == (f["side"] == "right"), (i, f, xs)
                checked += 1
    assert checked > 50


def test_rejects_tiny_size():
    with pytest.raises(ValueError, match="phantom size 8 is too small"):
        PhantomGenerator(size=8)
