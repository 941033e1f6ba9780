"""Adapters against the real metadata files in ../shared/data (skipped when absent)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from maskkit.data.records import (DataError, chexpert, covidx, generic_csv, image_folder, load_table, mimic, nih,
                                  openi, padchest, read_csv, rsna)
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
    assert math.isnan(r.labels["No Finding"])
    assert r.labels["Lung Opacity"] == 1.0
    got = r.labels["Cardiomegaly"]
    assert (math.isnan(got) if expected == "nan" else got == expected)
    assert t.records[0].labels["Pneumothorax"] == 0.0


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
    with pytest.raises(DataError, match="needs data.headers_csv"):
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
    (lambda p: chexpert(p, uncertain="maybe"), "data.uncertain: 'maybe' is not a policy"),
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
