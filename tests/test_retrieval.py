"""Image-report retrieval metrics, the shared bootstrap, and the 5x200 id-set builders."""

from __future__ import annotations

import csv
import gzip
import json
import math

import numpy as np
import pytest

from conftest import shared_path
from maskkit.data.records import CHEXPERT_LABELS, Record, Table
from maskkit.errors import MaskkitError
from maskkit.eval import retrieval as R
from maskkit.eval.bootstrap import bootstrap_indices, percentile_interval, resample_counts, weighted_median
from maskkit.eval.retrieval import report_groups, retrieval_metrics
from maskkit.eval.subsets import (FIVE_CLASSES, IdSet, IdSetError, build_5x200, chexpert_5x200, eligible_5x200,
                                  load_id_set, mimic_5x200, save_id_set, select, table_for_5x200)

# --- retrieval: hand-computed ----------------------------------------------------------------

# 4 images, 3 report columns; images 0 and 1 are one study (report 0).
SIM = np.array([[0.9, 0.1, 0.6],
                [0.5, 0.5, 0.7],
                [0.3, 0.3, 0.1],
                [0.0, 0.8, 0.6]])
OWN = np.array([0, 0, 1, 2])


def test_hand_computed_ranks_with_ties_broken_at_random_in_expectation():
    r = retrieval_metrics(SIM, OWN, ks=(1, 2, 5, 10), n_boot=0)
    # image -> report (above, tied): img0 own 0.9, (0, 0) -> rank 1; img1 own 0.5 loses to col 2 and ties
    # col 1, (1, 1) -> 1 + 1 + 1/2 = 2.5 (pessimistic 3, optimistic 2); img2 own 0.3 ties col 0, (0, 1) -> 1.5;
    # img3 own 0.6 < col 1, (1, 0) -> 2
    assert r.image_ranks.tolist() == [1.0, 2.5, 1.5, 2.0]
    assert r.image_counts.tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 1], [1, 0, 1]]
    # report -> image: report 0's best image (img0, 0.9) beats every other image -> 1;
    # report 1 (img2, 0.3) has img1 (0.5) and img3 (0.8) ahead -> 3;
    # report 2 (img3, 0.6): img1 (0.7) ahead and img0 ties at 0.6 -> 2.5
    assert r.report_queries.tolist() == [0, 1, 2] and r.report_ranks.tolist() == [1.0, 3.0, 2.5]
    m = r.metrics()
    # R@1: img0 1, img1 0, img2 1/2 (its own report first in one of the two orders), img3 0
    assert m["image_to_report_R@1"] == pytest.approx(1.5 / 4)
    assert m["image_to_report_R@2"] == pytest.approx((1 + 0.5 + 1 + 1) / 4) and m["image_to_report_R@5"] == 1.0
    assert m["image_to_report_median_rank"] == 1.75 and m["image_to_report_mean_rank"] == 1.75
    assert m["report_to_image_R@1"] == pytest.approx(1 / 3) and m["report_to_image_R@2"] == pytest.approx(1.5 / 3)
    assert m["report_to_image_R@10"] == 1.0
    assert m["report_to_image_median_rank"] == 2.5 and m["report_to_image_mean_rank"] == pytest.approx(6.5 / 3)
    assert not any(k.endswith("_ci_lo") for k in m)  # n_boot=0: no intervals
    assert r.to_json()["ties"] == "expected"


def test_tied_relevant_images_of_one_study():
    # every score 0: report 0's two images tie with the two images of report 1. In the 6 orders of
    # {rel, rel, irr, irr} the first relevant image is 1st in 3, 2nd in 2, 3rd in 1: R@1 1/2,
    # R@2 5/6, expected rank (3 + 2 * 2 + 3) / 6 = 5/3 (= 1 + tied / (relevant + 1) = 1 + 2/3)
    r = retrieval_metrics(np.zeros((4, 2)), np.array([0, 0, 1, 1]), ks=(1, 2), n_boot=0)
    assert r.report_counts.tolist() == [[0, 2, 2], [0, 2, 2]]
    assert r.report_ranks.tolist() == pytest.approx([5 / 3, 5 / 3])
    m = r.metrics()
    assert m["report_to_image_R@1"] == pytest.approx(0.5) and m["report_to_image_R@2"] == pytest.approx(5 / 6)
    assert m["image_to_report_R@1"] == pytest.approx(0.5) and m["image_to_report_mean_rank"] == 1.5


def test_second_image_of_a_study_does_not_count_against_its_report():
    # report 0 has two images scoring 0.9 and 0.8; one other image at 0.85: the first relevant image is 1st
    sim = np.array([[0.9, 0.0], [0.8, 0.0], [0.85, 0.9]])
    r = retrieval_metrics(sim, np.array([0, 0, 1]), n_boot=0)
    assert r.report_ranks.tolist() == [1, 1]
    assert r.image_ranks.tolist() == [1, 1, 1]  # img2: own 0.9 > 0.85


def test_constant_similarity_scores_chance_not_a_lucky_sort():
    r = retrieval_metrics(np.zeros((5, 5)), np.arange(5), ks=(1, 2, 5), n_boot=0)
    # each query ties with the 4 others: expected rank 1 + 4/2 = 3, R@K = K/5 (a random order)
    assert r.image_ranks.tolist() == [3.0] * 5 and r.report_ranks.tolist() == [3.0] * 5
    m = r.metrics()
    assert m["image_to_report_R@1"] == pytest.approx(0.2) and m["image_to_report_R@2"] == pytest.approx(0.4)
    assert m["report_to_image_R@1"] == pytest.approx(0.2)
    assert m["image_to_report_R@5"] == 1.0 and m["report_to_image_median_rank"] == 3.0


def test_distractor_reports_are_candidates_not_queries():
    sim = np.array([[0.5, 0.9], [0.1, 0.2]])  # report 1 has no image
    r = retrieval_metrics(sim, np.array([0, 0]), n_boot=0)
    assert r.image_ranks.tolist() == [2, 2] and r.report_queries.tolist() == [0] and r.report_ranks.tolist() == [1]


def _literal(above, tied, rel, k):
    """(P(hit within k), expected rank) of one query: P(X >= j) = C(tied, j) / C(tied + rel, j)."""
    j = k - above
    hit = 0.0 if j <= 0 else 1.0 if j > tied else 1 - math.comb(tied, j) / math.comb(tied + rel, j)
    return hit, 1 + above + tied / (rel + 1)


def _reference(sim, own, k=5):
    """The definitions written literally, one query at a time: ({image: (hit@k, rank)}, {report: ...})."""
    n, m = sim.shape
    i2r = {}
    for i in range(n):
        o = sim[i, own[i]]
        i2r[i] = _literal(sum(sim[i, j] > o for j in range(m)), sum(sim[i, j] == o for j in range(m) if j != own[i]), 1, k)
    r2i = {}
    for j in range(m):
        rel = [i for i in range(n) if own[i] == j]
        if rel:
            best = max(sim[i, j] for i in rel)
            irr = [sim[i, j] for i in range(n) if own[i] != j]
            r2i[j] = _literal(sum(v > best for v in irr), sum(v == best for v in irr), sum(sim[i, j] == best for i in rel), k)
    return i2r, r2i


@pytest.mark.parametrize("block", [None, 7])
def test_vectorised_ranks_equal_the_literal_definition(monkeypatch, block):
    if block:
        monkeypatch.setattr(R, "_BLOCK", block)  # row blocks of the matrix give the same ranks
    rng = np.random.default_rng(0)
    own = np.repeat(np.arange(12), rng.integers(1, 4, 12))  # 12 studies with 1-3 images each
    sim = np.round(rng.random((len(own), 15)), 1)  # 3 distractor columns; rounding makes many ties
    i2r, r2i = _reference(sim, own)
    r = retrieval_metrics(sim, own, n_boot=0)
    assert r.image_ranks.tolist() == pytest.approx([i2r[i][1] for i in range(len(own))])
    assert r.report_queries.tolist() == sorted(r2i)
    assert r.report_ranks.tolist() == pytest.approx([r2i[q][1] for q in sorted(r2i)])
    assert r.metrics()["report_to_image_R@5"] == pytest.approx(np.mean([v[0] for v in r2i.values()]))
    assert r.metrics()["image_to_report_R@5"] == pytest.approx(np.mean([v[0] for v in i2r.values()]))
    assert (r.report_counts[:, 2] > 1).any() and (r.report_counts[:, 1] > 0).any()  # the ties this test is about


def test_report_groups_one_column_per_text():
    texts, own = report_groups(["No acute process.", " No acute   process. ", "Small effusion.", "No acute process."])
    assert texts == ["No acute process.", "Small effusion."] and own.tolist() == [0, 0, 1, 0]
    with pytest.raises(MaskkitError, match="image 'b' has no report") as e:
        report_groups(["x", "   "], ids=["a", "b"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("sim, own, ks, msg", [
    (np.array([[0.1, np.nan]]), np.array([0]), (1,), r"similarity \[0, 1\] is nan"),
    (np.zeros(3), np.array([0]), (1,), r"must be \[n_images, n_reports\]"),
    (np.zeros((2, 2)), np.array([0, 2]), (1,), "image 1's report column is 2; expected 0..1"),
    (np.zeros((2, 2)), np.array([0.0, 1.0]), (1,), "integer column indices"),
    (np.zeros((2, 2)), np.array([0]), (1,), "2 integer column indices"),
    (np.zeros((2, 2)), np.array([0, 1]), (0, 5), r"ks must be positive integers, got \[0, 5\]"),
])
def test_bad_input_is_one_line(sim, own, ks, msg):
    with pytest.raises(MaskkitError, match=msg) as e:
        retrieval_metrics(sim, own, ks=ks, n_boot=0)
    assert "\n" not in str(e.value)


# --- the bootstrap ---------------------------------------------------------------------------

def test_bootstrap_indices_follow_the_zeroshot_convention():
    rng = np.random.default_rng(4)
    expected = np.stack([rng.integers(0, 7, 7) for _ in range(5)])  # one draw per resample, in order
    assert (bootstrap_indices(7, 5, seed=4) == expected).all()
    assert resample_counts(np.array([[0, 0, 2], [1, 2, 2]]), 3).tolist() == [[2, 0, 1], [0, 1, 2]]
    assert percentile_interval([]) != percentile_interval([])  # (nan, nan)
    assert percentile_interval(np.arange(101.0)) == (2.5, 97.5)


def test_weighted_median_is_the_median_of_the_expanded_values():
    rng = np.random.default_rng(2)
    values = rng.integers(1, 20, 9).astype(float)
    weights = rng.integers(0, 4, (30, 9))
    weights[:, 0] += 1  # at least one value per row
    expected = [np.median(np.repeat(values, w)) for w in weights]
    assert weighted_median(values, weights).tolist() == expected
    assert weighted_median(np.array([3.0, 1.0, 2.0, 10.0]), np.ones((1, 4), int)).tolist() == [2.5]


@pytest.mark.parametrize("decimals", [None, 1])
def test_bootstrap_resamples_whole_studies(decimals):
    rng = np.random.default_rng(5)
    own = np.repeat(np.arange(8), rng.integers(1, 4, 8))
    sim = rng.random((len(own), 10))
    if decimals is not None:
        sim = np.round(sim, decimals)  # ties: a resample averages the queries' hit probabilities
    res = retrieval_metrics(sim, own, ks=(1, 5), n_boot=40, seed=3)
    hit1 = [_literal(a, t, r, 1)[0] for a, t, r in res.image_counts]
    assert decimals is None or any(0 < h < 1 for h in hit1)
    # each resample written out: draw report columns, take every image of each drawn report
    idx = bootstrap_indices(len(res.report_queries), 40, seed=3)
    i2r_r1, r2i_med = [], []
    for row in idx:
        cols = res.report_queries[row]
        imgs = np.concatenate([np.flatnonzero(own == c) for c in cols])
        i2r_r1.append(np.mean(np.array(hit1)[imgs]))
        r2i_med.append(np.median(res.report_ranks[row]))
    assert res.ci["image_to_report"]["R@1"] == pytest.approx(percentile_interval(i2r_r1))
    assert res.ci["report_to_image"]["median_rank"] == pytest.approx(percentile_interval(r2i_med))
    again = retrieval_metrics(sim, own, ks=(1, 5), n_boot=40, seed=3)
    assert again.metrics() == res.metrics()
    other = retrieval_metrics(sim, own, ks=(1, 5), n_boot=40, seed=4)
    assert other.metrics() != res.metrics()
    m = res.metrics()
    assert m["image_to_report_R@5_ci_lo"] <= m["image_to_report_R@5"] <= m["image_to_report_R@5_ci_hi"]
    assert json.loads(json.dumps(res.to_json()))["bootstrap_unit"] == "report"


# --- 5x200: tiny tables with known answers ---------------------------------------------------

def _rec(i, positive=None, view="PA", report="r", **override):
    labels = {k: 0.0 for k in CHEXPERT_LABELS}
    if positive:
        labels[positive] = 1.0
    labels.update(override)
    return Record(id=f"img{i}", image_path=None, report=report, labels=labels, study_id=f"s{i}", view=view)


def _table(recs, name="chexpert"):
    return Table(name, recs, CHEXPERT_LABELS)


def test_eligibility_rule_by_hand():
    nan = float("nan")
    recs = [
        _rec(0, "Atelectasis"),                                   # eligible
        _rec(1, "Atelectasis", **{"No Finding": 1.0}),            # No Finding is not among the others: eligible
        _rec(2, "Atelectasis", **{"Support Devices": 1.0}),       # another observation positive
        _rec(3, "Atelectasis", **{"Edema": nan}),                 # another uncertain (unknown)
        _rec(4, "Atelectasis", view="LATERAL"),                   # not frontal
        _rec(5, None, Atelectasis=nan),                           # uncertain positive is not positive
        _rec(6, "Atelectasis", Cardiomegaly=1.0),                 # two of the five
        _rec(7, "Edema", view="AP"),                              # eligible for Edema
        _rec(8, "Edema", report=None),                            # eligible unless a report is required
        _rec(9, None),                                            # nothing positive
    ]
    got = eligible_5x200(_table(recs))
    assert got == {"Atelectasis": ["img0", "img1"], "Cardiomegaly": [], "Consolidation": [],
                   "Edema": ["img7", "img8"], "Pleural Effusion": []}
    assert eligible_5x200(_table(recs), require_report=True)["Edema"] == ["img7"]
    assert eligible_5x200(_table(recs), views=None)["Atelectasis"] == ["img0", "img1", "img4"]


def _balanced(n_per_class=30, start=0):
    return [_rec(start + 100 * j + i, c) for j, c in enumerate(FIVE_CLASSES) for i in range(n_per_class)]


def test_draw_is_seeded_and_independent_of_row_order():
    recs = _balanced()
    a = build_5x200(_table(recs), seed=0, k=5)
    assert a.classes == build_5x200(_table(list(reversed(recs))), seed=0, k=5).classes
    assert a.classes != build_5x200(_table(recs), seed=1, k=5).classes
    assert [len(v) for v in a.classes.values()] == [5] * 5
    label = a.label_of()
    assert all(next(r for r in recs if r.id == i).labels[label[i]] == 1.0 for i in a.ids)
    # a class's draw depends on its own eligible ids only: removing Edema records leaves Atelectasis's draw
    fewer = [r for r in recs if not (r.labels["Edema"] == 1.0 and int(r.id[3:]) % 2)]
    assert build_5x200(_table(fewer), seed=0, k=5).classes["Atelectasis"] == a.classes["Atelectasis"]
    assert a.definition["eligible"] == {c: 30 for c in FIVE_CLASSES} and a.definition["seed"] == 0


def test_fewer_eligible_than_k_is_one_line_with_the_counts():
    recs = _balanced(6)[:-4]  # Pleural Effusion keeps 2
    with pytest.raises(MaskkitError, match=r"fewer than k=5 eligible images for 1 class\(es\): Pleural Effusion 2") as e:
        build_5x200(_table(recs), k=5)
    assert "\n" not in str(e.value)
    assert len(build_5x200(_table(recs), k=2).ids) == 10


def test_builder_refuses_tables_it_cannot_apply_to():
    with pytest.raises(MaskkitError, match="no label 'Atelectasis'"):
        eligible_5x200(Table("t", [], ("Cardiomegaly",)))
    with pytest.raises(MaskkitError, match="no record of table chexpert has a view"):
        eligible_5x200(_table([_rec(0, "Edema", view=None)]))
    with pytest.raises(MaskkitError, match="id 'img0' appears twice"):
        eligible_5x200(_table([_rec(0, "Edema"), _rec(0, "Edema")]))
    with pytest.raises(MaskkitError, match="seed must be an integer >= 0"):
        build_5x200(_table(_balanced(2)), seed=-1, k=1)


def test_mimic_5x200_requires_a_report():
    recs = _balanced(3)
    recs[0].report = "___"  # only de-identification marks: no content
    s = mimic_5x200(_table(recs, "mimic"), k=2)
    assert "img0" not in s.ids and s.definition["require_report"] and "BenchX" in s.definition["source"]
    assert chexpert_5x200(_table(recs), k=3).definition["eligible"]["Atelectasis"] == 3


# --- stored id sets --------------------------------------------------------------------------

def test_id_set_round_trip_and_hash_checks(tmp_path):
    recs = _balanced(4)
    s = build_5x200(_table(recs), seed=2, k=3)
    path = save_id_set(s, tmp_path / "sets" / "five.json")
    back = load_id_set(path, _table(recs))
    assert back.classes == s.classes and back.sha256 == s.sha256 and back.definition["k"] == 3
    assert [r.id for r in select(_table(recs), back).records] == s.ids
    doc = json.loads(path.read_text())
    assert doc["n"] == 15 and doc["classes"]["Edema"]["n"] == 3
    # an edited id (hashes left as they were)
    doc["classes"]["Edema"]["ids"][0] = "img999"
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    with pytest.raises(IdSetError, match="the ids of class 'Edema' hash to .*the file was edited") as e:
        load_id_set(tmp_path / "edited.json")
    assert "\n" not in str(e.value)
    # ids the table does not have
    with pytest.raises(IdSetError, match=r"15 of 15 ids are not in table chexpert \(5 records\), e.g. 'img0'"):
        load_id_set(path, _table(_balanced(1, start=1000)))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(IdSetError, match="not JSON"):
        load_id_set(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"ids": []}))
    with pytest.raises(IdSetError, match="not a maskkit id-set file"):
        load_id_set(tmp_path / "other.json")
    with pytest.raises(IdSetError, match="not found"):
        load_id_set(tmp_path / "none.json")
    with pytest.raises(IdSetError, match="id 'a' is in class 'x' and in class 'y'"):
        save_id_set(IdSet("dup", {"x": ["a"], "y": ["a"]}), tmp_path / "dup.json")
    assert not (tmp_path / "dup.json").exists()


def test_published_ids_can_be_stored_as_they_are(tmp_path):
    """Another repository's set (BenchX publishes its MIMIC-5x200 ids) is imported, not redrawn."""
    s = IdSet("benchx-mimic-5x200", {"Edema": ["d2", "d1"], "Atelectasis": ["d3"]}, {"source": "BenchX"})
    back = load_id_set(save_id_set(s, tmp_path / "b.json"))
    assert back.classes == {"Edema": ["d1", "d2"], "Atelectasis": ["d3"]} and back.sha256 == s.sha256


# --- 5x200 on the real CheXpert train.csv head -------------------------------------------------

CHEXPERT_HEAD = ("metadata", "chexpert_train.head2000.csv.gz")


def _raw_rule(path):
    """The GLoRIA / MGCA rule on the raw CSV cells, independently of maskkit's adapter: Frontal,
    the class cell 1.0, every other observation but No Finding blank or 0.0 (fillna(0); -1 fails)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    others = [c for c in CHEXPERT_LABELS if c != "No Finding"]
    out = {c: set() for c in FIVE_CLASSES}
    for row in rows:
        if row["Frontal/Lateral"] != "Frontal":
            continue
        for c in FIVE_CLASSES:
            if row[c] == "1.0" and all(row[o] in ("", "0.0") for o in others if o != c):
                out[c].add(row["Path"])
    return out


def test_chexpert_head_eligibility_matches_the_raw_rule():
    path = shared_path(*CHEXPERT_HEAD)
    table = table_for_5x200("chexpert", root=str(path.parent), csv_name=str(path))
    raw = _raw_rule(path)
    got = eligible_5x200(table)
    assert {c: set(v) for c, v in got.items()} == raw
    assert all(raw.values())  # the head has eligible images of every class
    with pytest.raises(MaskkitError) as e:  # 2,000 rows hold fewer than 200 per class: say how many, in one line
        chexpert_5x200(table)
    assert "\n" not in str(e.value) and "fewer than k=200" in str(e.value)
    assert all(f"{c} {len(raw[c])}" in str(e.value) for c in FIVE_CLASSES)
    k = min(len(v) for v in raw.values())
    s = chexpert_5x200(table, seed=0, k=k)
    assert all(i in raw[c] for c, ids in s.classes.items() for i in ids)
    with pytest.raises(MaskkitError, match="needs uncertain=ignore"):
        table_for_5x200("chexpert", root=str(path.parent), csv_name=str(path), uncertain="ones")
