"""Adapters against the real metadata files in ../shared/data (skipped when absent)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from maskkit.data.records import (CHEXPERT_LABELS, DataError, chexpert, covidx, generic_csv, has_content, image_folder,
                                  join_sections, load_table, mimic, nih, openi, padchest, read_csv, rsna)
from maskkit.data.dataset import Collator, XrayDataset
from maskkit.data.tokenize import ReportTokenizer

META = ("metadata",)


def link(tmp_path, src, name=None):
    dst = tmp_path / (name or src.name)
    os.symlink(src, dst)
    return dst


def placeholder(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), value, np.uint8)).save(path)


def test_nih_rows_labels_views(tmp_path):
    link(tmp_path, shared_path(*META, "Data_Entry_2017_v2020.csv.gz"))
    t = nih(tmp_path)
    assert len(t) == 112120
    r = t.records[1]
    assert r.id == "00000001_001.png" and r.labels["Cardiomegaly"] == 1 and r.labels["Emphysema"] == 1
    assert r.labels["No Finding"] == 0 and r.view == "PA"
    pa = nih(tmp_path, views=["PA"])
    assert 0 < len(pa) < len(t) and {r.view for r in pa.records} == {"PA"}
    assert len(nih(tmp_path, one_per_study=True)) == len(t)  # NIH: one image per (patient, follow-up)
    nf = [r for r in t.records if r.labels["No Finding"] == 1]
    assert all(sum(v for k, v in r.labels.items() if k != "No Finding") == 0 for r in nf[:1000])


def test_nih_real_images_through_the_dataset():
    csv_path = shared_path("nih1000", "dev.csv")
    t = generic_csv(csv_path, image_col="image_path", report_col=None,
                    label_cols=["Atelectasis", "Cardiomegaly", "Effusion", "no_finding"], patient_col="patient_id")
    # image_path in dev.csv is relative to ../shared/data
    for r in t.records:
        r.image_path = str(csv_path.parent.parent / r.id)
    assert len(t) == 699
    ds = XrayDataset(t, image_size=64)
    batch = Collator(ReportTokenizer(16))([ds[i] for i in range(8)])
    assert batch["images"].shape == (8, 1, 64, 64) and batch["images"].max() <= 1
    assert not batch["paired"].any() and batch["skipped"] == []


def test_padchest_labels_and_projection():
    t = padchest(shared_path(*META), csv_name=str(shared_path(*META, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.head2000.csv.gz")))
    rows = read_csv(shared_path(*META, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.head2000.csv.gz"))
    assert len(t) == len(rows) > 1800
    assert "normal" in t.label_names and t.records[0].labels["normal"] == 1.0 and t.records[0].report is None
    lat = padchest(shared_path(*META), csv_name=str(shared_path(*META, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.head2000.csv.gz")), views=["LATERAL"])
    assert {r.view for r in lat.records} == {"LATERAL"} and len(lat) == sum(r["Projection"] == "L" for r in rows)


@pytest.mark.parametrize("policy,expected", [("ones", 1.0), ("zeros", 0.0), ("ignore", "nan")])
def test_chexpert_uncertain_policy_and_blank(tmp_path, policy, expected):
    t = chexpert(tmp_path, csv_name=str(shared_path(*META, "chexpert_train.head2000.csv.gz")), uncertain=policy)
    assert len(t) == 2000
    r = t.records[1]  # patient00002: Cardiomegaly -1, Lung Opacity 1, No Finding blank
    assert r.labels["No Finding"] == 0.0  # blank = not mentioned, whatever the uncertain policy
    assert r.labels["Lung Opacity"] == 1.0
    got = r.labels["Cardiomegaly"]
    assert (math.isnan(got) if expected == "nan" else got == expected)
    assert t.records[0].labels["Pneumothorax"] == 0.0
    unknown = chexpert(tmp_path, csv_name=str(shared_path(*META, "chexpert_train.head2000.csv.gz")), uncertain=policy,
                       blank="unknown")
    assert math.isnan(unknown.records[1].labels["No Finding"]) and unknown.records[1].labels["Lung Opacity"] == 1.0


def test_chexpert_no_finding_has_both_classes_on_the_real_csv():
    """The real train.csv holds No Finding as 1 or blank: under the default blank policy it is a
    two-class label (259 positives in the first 2,000 rows), under blank=unknown only {1, NaN}."""
    csv_name = str(shared_path(*META, "chexpert_train.head2000.csv.gz"))
    rows = read_csv(shared_path(*META, "chexpert_train.head2000.csv.gz"))
    assert {r["No Finding"] for r in rows} == {"1.0", ""}
    for policy in ("ones", "zeros", "ignore"):
        nf = [r.labels["No Finding"] for r in chexpert(shared_path(*META), csv_name=csv_name, uncertain=policy).records]
        assert nf.count(1.0) == 259 and nf.count(0.0) == 1741
    nf = [r.labels["No Finding"] for r in chexpert(shared_path(*META), csv_name=csv_name, blank="unknown").records]
    assert nf.count(1.0) == 259 and sum(map(math.isnan, nf)) == 1741


HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS)


@pytest.mark.parametrize("blank,uncertain,expected", [
    ("negative", "ones", [1.0, 0.0, 1.0, 0.0]), ("negative", "zeros", [1.0, 0.0, 0.0, 0.0]),
    ("negative", "ignore", [1.0, 0.0, "nan", 0.0]), ("unknown", "ones", [1.0, 0.0, 1.0, "nan"]),
    ("unknown", "ignore", [1.0, 0.0, "nan", "nan"]),
])
def test_blank_and_uncertain_are_separate_policies(tmp_path, blank, uncertain, expected):
    """Cells 1, 0.0, -1.0 and blank in one row, under each pair of policies (CheXpert and MIMIC)."""
    cells = ["1", "0.0", "-1.0", ""] + ["0"] * 10
    (tmp_path / "valid.csv").write_text(HEADER + "\nCheXpert-v1.0/valid/patient1/study1/view1_frontal.jpg,F,50,Frontal,PA,"
                                        + ",".join(cells) + "\n")
    _mimic_files(tmp_path, ",".join(cells))
    for t in (chexpert(tmp_path, csv_name="valid.csv", uncertain=uncertain, blank=blank),
              mimic(tmp_path, uncertain=uncertain, blank=blank)):
        got = [t.records[0].labels[k] for k in CHEXPERT_LABELS[:4]]
        assert [("nan" if math.isnan(v) else v) for v in got] == expected


def test_bad_label_cell_names_file_row_and_column(tmp_path):
    (tmp_path / "valid.csv").write_text(HEADER + "\nx/valid/p1/s1/v.jpg,F,50,Frontal,PA,1,,2,,,,,,,,,,,\n")
    with pytest.raises(DataError, match=r"valid.csv: row 2, column 'Cardiomegaly': expected 1, 0, -1 or blank, got '2'"):
        chexpert(tmp_path, csv_name="valid.csv")
    _mimic_files(tmp_path, ",".join(["1", "yes"] + [""] * 12))
    with pytest.raises(DataError, match=r"chexpert.csv: row 2, column 'Enlarged Cardiomediastinum': expected 1, 0, -1 or blank, got 'yes'"):
        mimic(tmp_path)
    with pytest.raises(DataError, match=r"^data.options.blank: 'zeros' is not a policy; expected negative \(blank = not mentioned\) or unknown"):
        chexpert(tmp_path, csv_name="valid.csv", blank="zeros")


def test_mimic_study_without_labeler_row_is_unknown(tmp_path):
    _mimic_files(tmp_path, ",".join(["1"] + [""] * 13))
    t = mimic(tmp_path)
    assert t.records[0].labels["No Finding"] == 1.0 and t.records[0].labels["Edema"] == 0.0
    assert all(math.isnan(v) for v in t.records[1].labels.values())  # study 57375967 has no labeler row


def _mimic_files(root, cells: str, report: str | None = None):
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text(
        "dicom_id,subject_id,study_id,ViewPosition\nd1,10000032,50414267,PA\nd3,10000764,57375967,AP\n")
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        "subject_id,study_id," + ",".join(CHEXPERT_LABELS) + "\n10000032,50414267," + cells + "\n")
    if report is not None:
        rep = root / "files" / "p10" / "p10000032" / "s50414267.txt"
        rep.parent.mkdir(parents=True, exist_ok=True)
        rep.write_text(report)


def test_chexpert_views_and_paths(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    t = chexpert(root, csv_name=str(shared_path(*META, "chexpert_train.head2000.csv.gz")), views=["LATERAL"])
    assert len(t) > 0 and all(r.view == "LATERAL" for r in t.records)
    assert t.records[0].image_path.startswith(str(root / "train" / "patient"))
    # placeholder images at the listed paths: the dataset decodes them
    for r in t.records[:4]:
        placeholder(__import__("pathlib").Path(r.image_path))
    ds = XrayDataset(type(t)(t.name, t.records[:4], t.label_names), image_size=32)
    assert all("image" in ds[i] for i in range(4))
    study = chexpert(root, csv_name=str(shared_path(*META, "chexpert_train.head2000.csv.gz")), one_per_study=True)
    assert len({r.study_id for r in study.records}) == len(study)


def test_rsna_target_and_views(tmp_path):
    headers = shared_path(*META, "kaggle_stage_2_train_images_dicom_headers.head2000.csv.gz")
    rows = read_csv(headers)
    # stage_2_train_labels.csv in its real format (box rows repeat a patient) for the listed patients
    lines = ["patientId,x,y,width,height,Target"]
    for i, r in enumerate(rows[:50]):
        lines.append(f"{r['PatientID']},,,,,0" if i % 3 else f"{r['PatientID']},10,10,50,50,1")
        if i % 3 == 0:
            lines.append(f"{r['PatientID']},70,90,40,40,1")
    (tmp_path / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    t = rsna(tmp_path, headers_csv=str(headers))
    assert len(t) == 50 and sum(r.labels["Pneumonia"] for r in t.records) == 17
    pa = rsna(tmp_path, headers_csv=str(headers), views=["PA"])
    assert 0 < len(pa) < 50 and all(r.view == "PA" for r in pa.records)
    with pytest.raises(DataError, match=r"^data.options.views: filtering RSNA by view needs data.options.headers_csv"):
        rsna(tmp_path, views=["PA"])


def test_covidx_split_file(tmp_path):
    (tmp_path / "train.txt").write_text("p1 a.png positive rsna\np2 b.png negative sirm\n\n")
    t = covidx(tmp_path)
    assert [r.labels["COVID-19"] for r in t.records] == [1.0, 0.0] and t.records[0].image_path.endswith("train/a.png")
    (tmp_path / "bad.txt").write_text("p1 a.png maybe\n")
    with pytest.raises(DataError, match=r"bad.txt:1: unknown class 'maybe'"):
        covidx(tmp_path, split_file="bad.txt")


def test_openi_reports_and_mesh():
    t = openi(shared_path("openi", "ecgen-radiology-dev.tgz"))
    assert len(t) == 2768
    with_report = [r for r in t.records if r.report]
    assert len(with_report) > 2600
    r = next(r for r in t.records if r.id == "CXR3")
    assert r.report.startswith("IMPRESSION: No displaced rib fractures") and r.labels["No Finding"] == 1.0
    assert sum(r.labels["Cardiomegaly"] for r in t.records) > 100


def test_generic_csv_and_folder(tmp_path):
    placeholder(tmp_path / "imgs" / "a.png")
    (tmp_path / "d.csv").write_text("image_path,report,effusion,edema\nimgs/a.png,Small effusion.,1,\nimgs/b.png,,0,1\n")
    t = generic_csv(tmp_path / "d.csv")
    assert t.label_names == ("effusion", "edema") and math.isnan(t.records[0].labels["edema"])
    assert t.records[1].report is None
    placeholder(tmp_path / "folder" / "normal" / "x.png")
    placeholder(tmp_path / "folder" / "covid" / "y.png")
    f = image_folder(tmp_path / "folder")
    assert f.label_names == ("covid", "normal") and len(f) == 2


@pytest.mark.parametrize("call,message", [
    (lambda p: nih(p / "nope"), "data.root: folder .*nope does not exist"),
    (lambda p: nih(p), "no NIH Data_Entry CSV found"),
    (lambda p: chexpert(p, csv_name=str(p / "c.csv")), r"c.csv: missing column 'Frontal/Lateral'"),
    (lambda p: load_table("mimc", root=p), "unknown dataset 'mimc'; did you mean 'mimic'"),
    (lambda p: chexpert(p, uncertain="maybe"), "data.options.uncertain: 'maybe' is not a policy"),
])
def test_adapter_errors(tmp_path, call, message):
    (tmp_path / "c.csv").write_text("Path,Sex\nx.jpg,F\n")
    with pytest.raises(DataError, match=message):
        call(tmp_path)


def test_mimic_layout(tmp_path):
    """MIMIC-CXR-JPG in its real layout (metadata / chexpert / split CSVs and the report tree)."""
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").write_text(
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
        "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544\nd2,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544\n"
        "d3,10000764,57375967,CHEST (PORTABLE AP),AP,3056,2544\n")
    (tmp_path / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        "subject_id,study_id," + ",".join(__import__("maskkit.data.records", fromlist=["x"]).CHEXPERT_LABELS) + "\n"
        "10000032,50414267," + ",".join(["", "", "-1.0", "1.0"] + [""] * 10) + "\n")
    (tmp_path / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,split\nd1,50414267,10000032,train\nd2,50414267,10000032,train\nd3,57375967,10000764,test\n")
    rep = tmp_path / "files" / "p10" / "p10000032" / "s50414267.txt"
    rep.parent.mkdir(parents=True)
    rep.write_text("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n FINDINGS: \n There is no focal consolidation,\n pleural effusion.\n\n IMPRESSION: \n No acute process.\n")
    t = mimic(tmp_path, split="train", uncertain="zeros")
    assert [r.id for r in t.records] == ["d1", "d2"]
    assert t.records[0].report == "FINDINGS: There is no focal consolidation, pleural effusion. IMPRESSION: No acute process."
    assert t.records[0].labels["Cardiomegaly"] == 0.0 and t.records[0].labels["Lung Opacity"] == 1.0
    assert t.records[0].image_path.endswith("files/p10/p10000032/s50414267/d1.jpg")
    assert [r.id for r in mimic(tmp_path, views=["PA", "AP"]).records] == ["d1", "d3"]
    assert [r.id for r in mimic(tmp_path, one_per_study=True).records] == ["d1", "d3"]
    assert mimic(tmp_path).records[2].report is None  # no report file for that study: image-only


MIMIC_DEID = ("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  ___ with"
              " cough\n\n FINDINGS: \n ___\n\n IMPRESSION: \n ___.\n")


@pytest.mark.parametrize("findings,impression,expected", [
    ("___", "___.", None),
    ("___ ___, ___.", "  -- ", None),
    ("[**Hospital1 18**] ___", "1. 2.", None),
    ("___", "No acute process.", "IMPRESSION: No acute process."),
    ("Heart size normal. ___", "___", "FINDINGS: Heart size normal. ___"),
])
def test_mimic_report_of_only_deid_marks_is_missing(tmp_path, findings, impression, expected):
    """Missing is decided on the section bodies, before the headings are written."""
    _mimic_files(tmp_path, ",".join([""] * 14), f" FINAL REPORT\n INDICATION: ___ with cough\n\n FINDINGS: \n {findings}\n\n"
                                                 f" IMPRESSION: \n {impression}\n")
    assert mimic(tmp_path).records[0].report == expected


def test_mimic_real_layout_deid_report_is_image_only(tmp_path):
    _mimic_files(tmp_path, ",".join([""] * 14), MIMIC_DEID)
    r = mimic(tmp_path).records[0]
    assert r.report is None  # INDICATION has text but is not a requested section


OPENI_XML = """<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText><AbstractText Label="INDICATION">XXXX-year-old male</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText><AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation><MeSH><major>normal</major></MeSH><parentImage id="CXR{n}_1"/></eCitation>"""


def test_openi_report_of_only_xxxx_is_missing(tmp_path):
    cases = {1: ("XXXX", "XXXX. XXXX, XXXX", None), 2: ("", "   ", None), 3: ("", ".", None),
             4: ("XXXX XXXX", "No XXXX effusion.", "IMPRESSION: No XXXX effusion."),
             5: ("The heart is normal.\n  Lungs   clear.", "XXXX.", "FINDINGS: The heart is normal. Lungs clear.")}
    for n, (f, i, _) in cases.items():
        (tmp_path / f"{n}.xml").write_text(OPENI_XML.format(n=n, findings=f, impression=i))
    got = {r.id: r.report for r in openi(tmp_path).records}
    assert got == {f"CXR{n}": want for n, (_, _, want) in cases.items()}


def test_csv_report_and_captions_without_content(tmp_path):
    (tmp_path / "d.csv").write_text("image_path,report,effusion,edema,no_finding\n"
                                    "a.png,XXXX.,1,0,0\nb.png,___ ___,0,0,1\nc.png,Small effusion.,0,,0\nd.png,,,,\ne.png,,0,0,0\n")
    t = generic_csv(tmp_path / "d.csv")
    assert [r.report for r in t.records] == [None, None, "Small effusion.", None, None]
    caps = generic_csv(tmp_path / "d.csv", captions_from_labels=True)
    # positives; No Finding = 1; an unknown label and no positive: no caption; all known negative
    assert [r.report for r in caps.records] == ["Findings: effusion.", "No finding.", None, None, "No finding."]


@pytest.mark.parametrize("text,expected", [("___", False), ("XXXX. XXXX", False), ("[**Name**], 1.", False), ("", False),
                                           (None, False), ("No XXXX effusion.", True), ("Normal.", True),
                                           ("Sin hallazgos", True), ("Cardiomegalia leve", True)])
def test_has_content(text, expected):
    assert has_content(text) is expected


def test_join_sections_decides_on_bodies():
    assert join_sections([("FINDINGS", "___"), ("IMPRESSION", "___")]) is None
    assert join_sections([("FINDINGS", None), ("IMPRESSION", " No  acute\nprocess. ")]) == "IMPRESSION: No acute process."


def test_csv_reads_the_patient_column_by_default(tmp_path):
    """A CSV's patient_id column keeps a patient's images together in every split (numeric ids too,
    which must not become a label)."""
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("image_path,report,patient_id,Effusion\na.png,x,1001,1\na.png,y,1001,0\n")
    t = generic_csv(tmp_path / "d.csv")
    assert [r.patient_id for r in t.records] == ["1001", "1001"] and t.label_names == ("Effusion",)
    assert generic_csv(tmp_path / "d.csv", patient_col=None).records[0].patient_id is None
