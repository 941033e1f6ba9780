"""PadChest seen-8 / unseen-by-frequency protocol (the XLIP paper's Tables I-II) and label parsing."""

from __future__ import annotations

import ast
import csv
import gzip
from collections import Counter

import numpy as np
import pytest

from conftest import shared_path
from maskkit.data.records import padchest, padchest_labels
from maskkit.errors import MaskkitError
from maskkit.eval.padchest import NOT_FINDINGS, SEEN, padchest_protocol

HEAD = ("metadata", "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.head2000.csv.gz")
COLUMNS = ["ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "MethodLabel", "Labels"]


def _csv(tmp_path, rows, columns=COLUMNS):
    path = tmp_path / "padchest.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for i, (labels, method) in enumerate(rows):
            row = {"ImageID": f"im{i}.png", "ImageDir": "0", "StudyID": f"s{i}", "PatientID": f"p{i}",
                   "Projection": "PA", "MethodLabel": method, "Labels": labels}
            w.writerow([row[c] for c in columns])
    return path


@pytest.mark.parametrize("cell, expected", [
    ("['normal']", ["normal"]),
    ("['pleural effusion', ' costophrenic angle blunting', '']", ["pleural effusion", "costophrenic angle blunting"]),
    ("", []),
    ("[]", []),
    ("['a', 3, None]", ["a"]),
    ("normal", None),          # not a literal
    ("'normal'", None),        # a literal, but not a list (it used to become n, o, r, m, a, l)
    ("['unclosed'", None),
])
def test_padchest_labels_cell(cell, expected):
    assert padchest_labels(cell) == expected


def test_ranking_exclusions_and_matrix_by_hand(tmp_path):
    rows = [  # 'allpos' is on every parsed physician-labelled image: it has no negative
        ("['pneumonia', 'nodule', 'kyphosis', 'allpos']", "Physician"),
        ("['nodule', 'scoliosis', 'allpos']", "Physician"),
        ("['kyphosis', 'nodule', 'allpos']", "Physician"),
        ("['normal', 'allpos']", "Physician"),
        ("['unchanged', 'scoliosis', 'allpos']", "Physician"),
        ("['garbled'", "Physician"),              # unparseable: unknown everywhere
        ("['hiatal hernia']", "RNN_model"),       # not physician-labelled: left out
        ("['everywhere', 'nodule', 'allpos']", "Physician"),
    ]
    t = padchest(str(tmp_path), csv_name=str(_csv(tmp_path, rows)))
    p = padchest_protocol(t)
    assert p.ids == ["im0.png", "im1.png", "im2.png", "im3.png", "im4.png", "im5.png", "im7.png"]
    # positives among the 6 parsed physician images: nodule 4, kyphosis 2, scoliosis 2, everywhere 1
    assert p.unseen == ["nodule", "kyphosis", "scoliosis", "everywhere"]  # count, then name
    absent_seen = {s: "no positive image" for s in SEEN if s != "pneumonia"}
    assert p.excluded == {"allpos": "no negative image", "hiatal hernia": "no positive image",  # only on the model-labelled image
                          "normal": "not a finding", "unchanged": "not a finding", **absent_seen}
    assert "hiatal hernia" not in p.classes and "allpos" not in p.classes
    # a seen label with no positive among the evaluated images is in neither set, and said (it was scored)
    assert p.seen == ["pneumonia"] and "fracture" not in p.classes
    assert "padchest: seen class 'fracture' has no positive image among the 7 evaluated images: it is in neither set " \
           "and not scored" in p.warnings and len(p.warnings) == 7 + 1
    assert p.warnings[-1].startswith("padchest: 2 other labels have no positive or no negative among the 7 evaluated images")
    assert p.positives["pneumonia"] == 1 and p.positives["pulmonary edema"] == 0
    labs, y, prompts = p.subset("seen")
    assert labs == ["pneumonia"] and prompts == ["Pneumonia"]
    assert y[:, 0].tolist()[:5] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert np.isnan(y[5]).all()  # the unparseable row is unknown
    # a seen label on every evaluated image has no negative: also neither (the same rule)
    allseen = padchest_protocol(padchest(str(tmp_path), csv_name=str(_csv(tmp_path, [
        ("['pneumonia', 'nodule']", "Physician"), ("['pneumonia']", "Physician"), ("['pneumonia', 'cardiomegaly']", "Physician")]))))
    assert allseen.seen == ["cardiomegaly"] and allseen.excluded["pneumonia"] == "no negative image"
    assert allseen.to_json()["seen"] == {"cardiomegaly": "Cardiomegaly"}
    labs10, y10, prompts10 = p.subset("unseen10")
    assert labs10 == p.unseen and prompts10 == p.unseen  # fewer than 10: what there is
    assert y10[:, 0].tolist()[:5] == [1.0, 1.0, 1.0, 0.0, 0.0]
    with pytest.raises(MaskkitError, match="unknown subset 'unseen30'"):
        p.subset("unseen30")
    everyone = padchest_protocol(t, physician_only=False)
    assert "hiatal hernia" in everyone.unseen and len(everyone.ids) == 8


def test_protocol_refuses_what_it_cannot_score(tmp_path):
    path = _csv(tmp_path, [("['nodule']", "Physician"), ("['kyphosis']", "Physician")])
    with pytest.raises(MaskkitError, match="has no labels; load PadChest without the labels option") as e:
        padchest_protocol(padchest(str(tmp_path), csv_name=str(path), labels=[]))
    assert "\n" not in str(e.value)
    no_method = _csv(tmp_path, [("['nodule']", "")], columns=[c for c in COLUMNS if c != "MethodLabel"])
    t = padchest(str(tmp_path), csv_name=str(no_method))
    assert t.records[0].extra["method_label"] is None
    with pytest.raises(MaskkitError, match="carries a MethodLabel .*physician_only=False"):
        padchest_protocol(t)
    only_model = _csv(tmp_path, [("['nodule']", "RNN_model")])
    with pytest.raises(MaskkitError, match="none is physician-labelled"):
        padchest_protocol(padchest(str(tmp_path), csv_name=str(only_model)))


def test_real_padchest_head():
    path = shared_path(*HEAD)
    table = padchest(str(path.parent), csv_name=str(path))
    p = padchest_protocol(table)
    # an independent count from the raw CSV: physician-labelled images, labels as listed
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["MethodLabel"] == "Physician"]
    counts = Counter(lab.strip() for r in rows for lab in set(ast.literal_eval(r["Labels"])) if lab.strip())
    assert len(p.ids) == len(rows)
    assert {s: p.positives[s] for s in SEEN} == {s: counts.get(s, 0) for s in SEEN}
    not_findings = {n for n in counts if n in NOT_FINDINGS}
    expected_unseen = sorted((n for n in counts if n not in SEEN and n not in not_findings and counts[n] < len(rows)),
                             key=lambda n: (-counts[n], n.casefold()))
    assert p.unseen == expected_unseen
    absent_seen = {s for s in SEEN if not counts.get(s)}
    assert absent_seen == {"fracture"} and p.seen == [s for s in SEEN if s != "fracture"]  # 7 of the 8 (docs/eval.md)
    assert set(p.excluded) == not_findings | absent_seen
    assert len(p.subset("unseen10")[0]) == 10 and p.subset("unseen20")[0][:10] == p.subset("unseen10")[0]
    assert len(p.seen) + len(p.excluded) + len(p.unseen) == len(set(counts) | set(SEEN))
    _, y, _ = p.subset("unseen")
    assert y.shape == (len(rows), len(p.unseen)) and (y.sum(0) == [counts[n] for n in p.unseen]).all()
    assert p.to_json()["seen"]["pulmonary edema"] == "Edema"
