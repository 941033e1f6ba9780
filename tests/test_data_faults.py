"""Faults a fresh user found in the data layer: an image listed by two sources,
options naming a column the file lacks, and CSV cells / files that were read silently wrong."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from maskkit.config import resolve
from maskkit.data.build import build_corpus
from maskkit.data.records import DataError, OptionError, load_table
from maskkit.errors import MaskkitError


def _img(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), value, np.uint8)).save(path)


def _csv(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def one_line(exc) -> str:
    s = str(exc.value)
    assert "\n" not in s, s
    return s


# --- 2. an option naming a column (or key) the file lacks ------------------------------------

@pytest.fixture
def plain_csv(tmp_path):
    for i in range(4):
        _img(tmp_path / f"i{i}.png", i)
    return _csv(tmp_path / "d.csv", "image_path,report,Cardiomegaly", [f"i{i}.png,Heart normal {i}.,{i % 2}" for i in range(4)])


@pytest.mark.parametrize("option,value", [("patient_col", "patient"), ("report_col", "text"), ("image_col", "file"),
                                          ("label_cols", ["Cardiomegaly", "Edema"])])
def test_csv_option_naming_an_absent_column_is_one_line(plain_csv, option, value):
    bad = value[-1] if isinstance(value, list) else value
    with pytest.raises(OptionError) as e:
        load_table("csv", path=str(plain_csv), **{option: value})
    assert one_line(e) == f"{plain_csv}: data.options.{option}: no column '{bad}'; it has image_path, report, Cardiomegaly"
    # in an entry of data.sources the key is spelt as the entry sets it
    cfg = resolve([f"data.sources={json.dumps([{'name': 'csv', 'path': str(plain_csv), option: value}])}", "preset=clip"])[0]
    with pytest.raises(MaskkitError) as e:
        build_corpus(cfg, 96)
    assert one_line(e) == f"{plain_csv}: data.sources[0] (csv).{option}: no column '{bad}'; it has image_path, report, Cardiomegaly"


def test_csv_default_columns_stay_optional(plain_csv):
    t = load_table("csv", path=str(plain_csv))  # no patient_id column: the default is optional
    assert [r.patient_id for r in t.records] == [None] * 4 and t.records[0].report == "Heart normal 0."
    # an explicit null still means "no such column"
    assert load_table("csv", path=str(plain_csv), report_col=None).records[0].report is None
    # the default image column missing keeps its message
    bad = _csv(plain_csv.parent / "m.csv", "path,report", ["i0.png,x"])
    with pytest.raises(DataError, match=r"m.csv: missing column 'image_path'; it has path, report$"):
        load_table("csv", path=str(bad))
    # maskkit datasets shows the defaults as the plain names
    from maskkit.data.adapters import get_adapter

    rows = {r["option"]: r["default"] for r in get_adapter("csv").option_rows()}
    assert (rows["report_col"], rows["patient_col"], rows["image_col"]) == ("'report'", "'patient_id'", "'image_path'")


def test_csv_image_root_given_must_be_a_folder(plain_csv, tmp_path):
    with pytest.raises(OptionError) as e:
        load_table("csv", path=str(plain_csv), image_root=str(tmp_path / "nope"))
    assert one_line(e) == f"data.options.image_root: folder {tmp_path / 'nope'} does not exist"


def jsonl_plugin():
    try:
        import maskkit_jsonl  # noqa: F401
    except ImportError:
        pytest.skip("plugins/maskkit-jsonl is not installed (pip install -e plugins/maskkit-jsonl)")


@pytest.mark.parametrize("option,value", [("patient_key", "pid"), ("report_key", "text"), ("labels_key", "labs")])
def test_jsonl_key_naming_an_absent_key_is_one_line(tmp_path, option, value):
    jsonl_plugin()
    p = tmp_path / "c.jsonl"
    p.write_text('{"image": "a.png", "report": "Heart normal.", "labels": {"a": 1}}\n{"image": "b.png", "patient": "p2"}\n')
    with pytest.raises(OptionError) as e:
        load_table("jsonl", path=str(p), **{option: value})
    assert one_line(e) == f"{p}: data.options.{option}: no key '{value}'; it has image, report, labels, patient"
    t = load_table("jsonl", path=str(p))  # the default keys are optional, line by line
    assert [r.patient_id for r in t.records] == [None, "p2"] and t.label_names == ("a",)
    with pytest.raises(DataError, match=r"c.jsonl:2: 'image': empty; expected an image file name or path$"):
        p.write_text('{"image": "a.png"}\n{"image": " "}\n')
        load_table("jsonl", path=str(p))


# --- 8. CSV cells and files read silently wrong ---------------------------------------------

def test_a_text_cell_in_a_label_column_is_one_line(tmp_path):
    p = _csv(tmp_path / "t.csv", "image_path,patient_id,Edema,Cardiomegaly,sex",
             ["i0.png,p0,1,0,M", "i1.png,p1,0,1,F", "i2.png,p2,yes,1,F"])
    with pytest.raises(DataError) as e:
        load_table("csv", path=str(p))
    assert one_line(e) == (f"{p}: row 4, column 'Edema': expected 1, 0, -1 or blank (its other cells are label values), "
                           "got 'yes'; correct the cell, or choose the label columns with the label_cols option")
    # a text column (sex) is not a label column, silently; label_cols leaves Edema out
    t = load_table("csv", path=str(p), label_cols=["Cardiomegaly"])
    assert t.label_names == ("Cardiomegaly",)
    p.write_text(p.read_text().replace("yes", "1"))
    assert load_table("csv", path=str(p)).label_names == ("Edema", "Cardiomegaly")


@pytest.mark.parametrize("text,message", [
    ("image_path;report;Edema\na.png;x;1\n",
     "the header is one column, 'image_path;report;Edema'; expected comma-separated columns (the file looks ';'-separated: "
     "save it as CSV with commas)"),
    ("image_path\treport\tEdema\na.png\tx\t1\n",
     "the header is one column, 'image_path\\treport\\tEdema'; expected comma-separated columns (the file looks "
     "tab-separated: save it as CSV with commas)"),
    ("", "the file is empty; expected a CSV header row naming its columns (image_path, ...), then one row per record"),
    ("\n\n", "the file is empty; expected a CSV header row naming its columns (image_path, ...), then one row per record"),
    ("image_path,patient_id,Edema\na.png,p0,1\n,p1,0\n", "row 3, column 'image_path': empty; expected an image file name or path"),
    ("image_path,patient_id,Edema\nsub/,p0,1\n", "row 2, column 'image_path': 'sub/' names a folder; expected an image file name or path"),
])
def test_csv_files_that_are_not_what_the_adapter_reads_are_one_line(tmp_path, text, message):
    p = tmp_path / "f.csv"
    p.write_text(text)
    with pytest.raises(DataError) as e:
        load_table("csv", path=str(p))
    assert one_line(e) == f"{p}: {message}"


def test_an_image_path_that_is_a_folder_is_named_as_one(tmp_path):
    from maskkit.data.images import DecodeError, read_image

    (tmp_path / "sub").mkdir()
    with pytest.raises(DecodeError) as e:
        read_image(tmp_path / "sub")
    assert one_line(e) == f"{tmp_path / 'sub'}: a folder, not an image file; expected an image file (PNG, JPEG, DICOM, ...)"
    with pytest.raises(DecodeError, match="image file does not exist$"):
        read_image(tmp_path / "none.png")


# --- 1. one image file listed by two sources (or twice by one) -------------------------------

def _shared_images(tmp_path, n=40):
    """Two CSVs over the same image files: a.csv with patient ids, b.csv (another folder, paths
    written ../) without, so their per-record splits differ."""
    (tmp_path / "b").mkdir()
    for i in range(n):
        _img(tmp_path / f"i{i}.png", i)
    a = _csv(tmp_path / "a.csv", "image_path,report,patient_id,Cardiomegaly", [f"i{i}.png,Heart normal {i}.,p{i},{i % 2}" for i in range(n)])
    b = _csv(tmp_path / "b" / "b.csv", "image_path,report,Cardiomegaly", [f"../i{i}.png,Heart normal {i}.,{i % 2}" for i in range(n)])
    return a, b


def _paths(records):
    return {os.path.abspath(r.image_path) for r in records}


def test_an_image_held_out_by_one_source_trains_in_none(tmp_path):
    from maskkit.data.build import read_split, write_split, eval_corpus

    a, b = _shared_images(tmp_path)
    cfg = resolve([f"data.sources={json.dumps([{'name': 'csv', 'path': str(a)}, {'name': 'csv', 'path': str(b)}])}",
                   "preset=clip", "train.seed=1"])[0]
    c = build_corpus(cfg, 96)
    held = set().union(*(_paths(s.held_records) for s in c.sources))
    trained = set().union(*(_paths(s.train_records) for s in c.sources))
    assert held and trained and not held & trained
    # the same images as the two sources split them on their own: each leaks without the rule
    from maskkit.data.build import VAL_FRACTION, split_by_patient

    own = [split_by_patient(load_table("csv", path=str(p)).records, VAL_FRACTION, 1) for p in (a, b)]
    leaked = [_paths(tr) & _paths(own[1 - k][1]) for k, (tr, _) in enumerate(own)]
    assert [len(x) for x in leaked] == [s.left_out.count for s in c.sources] and all(leaked)
    rec = c.split_record()["sources"]
    for s, r in zip(c.sources, rec):
        assert r["left_out_of_training"] == s.left_out.count and r["train"] + r["held_out"] + r["left_out_of_training"] == 40
        assert "an image held out anywhere trains nowhere" in r["note"]
    ex = next(iter(leaked[1]))
    assert any(l.startswith(f"note: data.sources[1] (csv): {len(leaked[1])} training record") and "held out by data.sources[0] (csv)"
               in l for l in c.summary_lines())
    assert ex in _paths(c.sources[0].held_records)
    # what every command that evaluates the run rebuilds: the same rule, the same split
    run = tmp_path / "run"
    run.mkdir()
    write_split(run, c)
    _, again, _ = eval_corpus(run, cfg, 96)
    assert [s.held_out_ids for s in again.sources] == [s.held_out_ids for s in c.sources]
    assert not set().union(*(_paths(s.held_records) for s in again.sources)) & set().union(*(_paths(s.train_records) for s in again.sources))
    assert read_split(run)["sources"][1]["left_out_of_training"] == len(leaked[1])


def test_an_image_listed_twice_by_one_source_and_by_mimic(tmp_path):
    """One CSV listing each image twice without a patient id (rows are split one by one), and a CSV
    of MIMIC-CXR's own files beside the mimic adapter."""
    from test_sources import mimic_root

    for i in range(30):
        _img(tmp_path / f"i{i}.png", i)
    twice = _csv(tmp_path / "t.csv", "image_path,report", [f"{p}i{i}.png,Heart normal {i}." for i in range(30) for p in ("", "./")])
    c = build_corpus(resolve(["data=csv", f"data.path={twice}", "preset=clip", "train.seed=2"])[0], 96)
    (s,) = c.sources
    # listed twice by one source: read once (A67), so nothing to leave out
    assert s.duplicates == 30 and s.records == 30 and s.left_out is None and not _paths(s.held_records) & _paths(s.train_records)
    m = mimic_root(tmp_path / "mimic", n=30)
    jpgs = sorted(m.rglob("*.jpg"))
    mine = _csv(tmp_path / "mine.csv", "image_path,report", [f"{p},Extra caption {k}." for k, p in enumerate(jpgs)])
    srcs = [{"name": "mimic", "root": str(m)}, {"name": "csv", "path": str(mine)}]
    c = build_corpus(resolve([f"data.sources={json.dumps(srcs)}", "preset=clip", "train.seed=0"])[0], 96)
    held = set().union(*(_paths(s.held_records) for s in c.sources))
    assert held and not held & set().union(*(_paths(s.train_records) for s in c.sources))


def test_a_patient_id_in_two_sources_is_held_out_by_both_or_neither(tmp_path):
    """split_by_patient decides by '<seed>:<patient>': a patient id two sources share lands on one
    side in both, whatever else the sources hold (no rule needed, none applied)."""
    for i in range(60):
        _img(tmp_path / f"i{i}.png", i)
    a = _csv(tmp_path / "a.csv", "image_path,patient_id,Cardiomegaly", [f"i{i}.png,p{i // 2},{i % 2}" for i in range(0, 60, 2)])
    b = _csv(tmp_path / "b.csv", "image_path,patient_id,Cardiomegaly", [f"i{i}.png,p{i // 2},{i % 2}" for i in range(1, 60, 2)])
    c = build_corpus(resolve([f"data.sources={json.dumps([{'name': 'csv', 'path': str(a)}, {'name': 'csv', 'path': str(b)}])}",
                              "preset=clip", "train.seed=4"])[0], 96)
    held = [{r.patient_id for r in s.held_records} for s in c.sources]
    assert held[0] and held[0] == held[1] and all(s.left_out is None for s in c.sources)


def test_padchest_labels_and_mimic_sections_that_no_row_has_are_one_line(tmp_path):
    """The other options that name something in the files: PadChest's label set, MIMIC's sections."""
    from test_sources import mimic_root, padchest_root

    p = padchest_root(tmp_path / "padchest", n=4)
    assert load_table("padchest", root=str(p), labels=["normal"]).label_names == ("normal",)
    with pytest.raises(OptionError) as e:
        load_table("padchest", root=str(p), labels=["normal", "Normal", "pneumonia"])
    csv = p / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    assert one_line(e) == (f"{csv}: data.options.labels: no row has the label 'Normal'; did you mean 'normal'? (2 of 3 named are "
                           "absent; labels are the strings of the Labels lists, e.g. 'normal')")
    m = mimic_root(tmp_path / "mimic", n=3)
    assert load_table("mimic", root=str(m), sections=["impression"]).records[0].report == "IMPRESSION: No acute process."
    with pytest.raises(OptionError) as e:
        load_table("mimic", root=str(m), sections=["findings", "impresion"])
    assert one_line(e) == (f"{m}: data.options.sections: no report has a section 'impresion'; did you mean 'impression'?; "
                           "the reports have findings, impression")


# --- a source without patient ids is split by image, and says so ------------------------------

def _patient_csv(tmp_path, col):
    for i in range(32):
        _img(tmp_path / f"i{i}.png", i)
    return _csv(tmp_path / "d.csv", f"image_path,report,{col},Cardiomegaly",
                [f"i{i}.png,Heart normal {i}.,p{i // 4},{i % 2}" for i in range(32)])


@pytest.mark.parametrize("col", ["PatientID", "Patient ID", "subject_id"])
def test_a_csv_without_its_patient_column_warns_and_records_a_split_by_image(tmp_path, col):
    p = _patient_csv(tmp_path, col)
    c = build_corpus(resolve(["data=csv", f"data.path={p}", "preset=clip"])[0], 96)
    s = c.sources[0]
    assert s.by_image and s.patients == 32  # 8 patients in the file, 32 "patients" to the split
    warnings = [line for line in c.summary_lines() if line.startswith("warning:")]
    assert warnings == [f"warning: data (csv): no patient column: {p} has no 'patient_id' (patient_col's default): split by "
                        f"image, so one patient's images may be both trained on and held out; column that looks like one: "
                        f"'{col}' (set data.options.patient_col={col})"]
    assert s.record()["note"].startswith("split by image: no patient column")
    # named, the column splits by patient: no warning, no note, 8 patients
    c = build_corpus(resolve(["data=csv", f"data.path={p}", "preset=clip", f"data.options.patient_col={col}"])[0], 96)
    assert not c.sources[0].by_image and c.sources[0].patients == 8
    assert not [line for line in c.summary_lines() if line.startswith("warning:")]
    assert "split by image" not in c.sources[0].record().get("note", "")
    # an entry of data.sources is named as the entry
    cfg = resolve([f"data.sources={json.dumps([{'name': 'csv', 'path': str(p)}])}", "preset=clip"])[0]
    (w,) = [line for line in build_corpus(cfg, 96).summary_lines() if line.startswith("warning:")]
    assert w.startswith("warning: data.sources[0] (csv): no patient column:") and w.endswith(f"(set data.sources[0] (csv).patient_col={col})")


def test_a_source_without_patient_ids_and_no_look_alike_column(tmp_path, plain_csv):
    c = build_corpus(resolve(["data=csv", f"data.path={plain_csv}", "preset=clip"])[0], 96)
    (w,) = [line for line in c.summary_lines() if line.startswith("warning:")]
    assert w.endswith("held out; if another column holds patient ids, name it with data.options.patient_col")
    # an adapter with no patient ids at all (an image folder)
    for i in range(12):
        _img(tmp_path / "f" / f"i{i}.png", i)
    c = build_corpus(resolve(["data=folder", f"data.root={tmp_path / 'f'}", "preset=clip"])[0], 96)
    assert [line for line in c.summary_lines() if line.startswith("warning:")] == [
        "warning: data (folder): its records carry no patient id: split by image, so one patient's images may be both "
        "trained on and held out"]
    assert c.sources[0].record()["note"].startswith("split by image: no patient id")


def test_a_jsonl_without_its_patient_key_warns(tmp_path):
    jsonl_plugin()
    p = tmp_path / "c.jsonl"
    for i in range(12):
        _img(tmp_path / f"i{i}.png", i)
    p.write_text("".join(json.dumps({"image": f"i{i}.png", "report": f"Heart normal {i}.", "PatientId": f"p{i // 3}"}) + "\n"
                         for i in range(12)))
    c = build_corpus(resolve(["data=jsonl", f"data.path={p}", "preset=clip"])[0], 96)
    (w,) = [line for line in c.summary_lines() if line.startswith("warning:")]
    assert w == (f"warning: data (jsonl): no patient key: {p} has no 'patient' (patient_key's default): split by image, so "
                 f"one patient's images may be both trained on and held out; key that looks like one: 'PatientId' "
                 f"(set data.options.patient_key=PatientId)")
    assert c.sources[0].record()["note"].startswith("split by image: no patient key")


# --- a weight that would materialise a huge epoch ---------------------------------------------

def test_a_weight_of_1e9_is_refused_in_one_line_at_once(tmp_path):
    import time

    from maskkit.data.loader import MAX_EPOCH_SAMPLES, MixtureBatchSampler, check_epoch
    from maskkit.distributed import DistInfo

    p = _patient_csv(tmp_path, "patient_id")
    entries = [{"name": "csv", "path": str(p), "weight": 1e9}, {"name": "csv", "path": str(p), "image_root": str(tmp_path)}]
    cfg = resolve([f"data.sources={json.dumps(entries)}", "preset=clip"])[0]
    t0 = time.perf_counter()
    with pytest.raises(MaskkitError) as e:
        build_corpus(cfg, 96)
    assert time.perf_counter() - t0 < 5
    n = len([r for r in p.read_text().splitlines()[1:]])  # 32 rows, 8 patients: some held out
    msg = one_line(e)
    assert msg.startswith("data.sources[0] (csv).weight: 1e+09 makes an epoch draw ") and "training records), above the 16777216" in msg
    with pytest.raises(MaskkitError, match=r"^source 0.weight: 1e\+09 makes an epoch draw 2e\+10 samples \(2e\+10 of its 20 "):
        MixtureBatchSampler([20, 10], [1e9, 1.0], 4, 0, DistInfo())
    # at the bound: accepted; a corpus larger than the bound at weight 1: accepted (each record once)
    assert sum(check_epoch([16, 1], [(MAX_EPOCH_SAMPLES - 1) / 16, 1.0])) == MAX_EPOCH_SAMPLES
    with pytest.raises(MaskkitError):
        check_epoch([16, 1], [MAX_EPOCH_SAMPLES / 16, 1.0])
    assert check_epoch([MAX_EPOCH_SAMPLES + 5], [1.0]) == [MAX_EPOCH_SAMPLES + 5] and n == 32


# --- a wrong image root: found when the data is built ------------------------------------------

def test_a_wrong_image_root_is_one_line_when_the_data_is_built(tmp_path):
    p = _patient_csv(tmp_path, "patient_id")
    (tmp_path / "elsewhere").mkdir()
    entries = [{"name": "csv", "path": str(p)}, {"name": "csv", "path": str(p), "image_root": str(tmp_path / "elsewhere")}]
    cfg = resolve([f"data.sources={json.dumps(entries)}", "preset=clip"])[0]
    with pytest.raises(MaskkitError) as e:
        build_corpus(cfg, 96)
    assert one_line(e) == (f"data.sources[1] (csv): image {tmp_path / 'elsewhere' / 'i0.png'} does not exist, nor any of the "
                           f"first 16 records' images; check data.sources[1] (csv).image_root")
    # the default root (the CSV's folder) is named as unset
    moved = tmp_path / "sub"
    moved.mkdir()
    (moved / "d.csv").write_text(p.read_text())
    with pytest.raises(MaskkitError) as e:
        build_corpus(resolve(["data=csv", f"data.path={moved / 'd.csv'}", "preset=clip"])[0], 96)
    assert one_line(e).endswith("images; check data.options.image_root (unset, relative paths resolve against the file's folder)")
    # one image missing among found ones is the skip policy's, not this check's
    (tmp_path / "i0.png").unlink()
    assert build_corpus(resolve(["data=csv", f"data.path={p}", "preset=clip"])[0], 96).sources[0].records == 32


# --- blank patient ids in a source that has the patient column --------------------------------

def test_blank_patient_ids_among_others_are_counted_warned_and_noted(tmp_path):
    """Rows of a CSV that has the patient column but a blank cell: counted, one warning naming the
    source, the column and the count, and a split.json note (as a source without the column has)."""
    for i in range(32):
        _img(tmp_path / f"i{i}.png", i)
    rows = [f"i{i}.png,Heart normal {i}.,{'' if i in (3, 7, 9) else ('  ' if i == 11 else f'p{i // 4}')},{i % 2}" for i in range(32)]
    p = _csv(tmp_path / "d.csv", "image_path,report,patient_id,Cardiomegaly", rows)
    c = build_corpus(resolve(["data=csv", f"data.path={p}", "preset=clip"])[0], 96)
    s = c.sources[0]
    assert s.no_patient == 4 and not s.by_image and s.patients == 8 + 4
    warnings = [line for line in c.summary_lines() if line.startswith("warning:")]
    assert warnings == ["warning: data (csv): 4 of 32 records have no patient id ('patient_id' blank or missing): each is split "
                        "by itself, so its patient's other images may be trained on while it is held out; fill in the patient ids"]
    assert "4 of 32 records have no patient id" in s.record()["note"]
    # a whitespace id is no patient: the four are not one patient '' (or '  ') held out together
    assert all(r.patient_id is None for r in (*s.train_records, *s.held_records) if r.id in {"i3.png", "i7.png", "i9.png", "i11.png"})
    # every adapter goes through SourceSpec.load: the jsonl plugin, a line without the key
    jsonl_plugin()
    j = tmp_path / "c.jsonl"
    j.write_text("".join(json.dumps({"image": f"i{i}.png", "report": f"Heart normal {i}.", **({} if i == 5 else {"patient": f"p{i // 3}"})})
                         + "\n" for i in range(12)))
    c = build_corpus(resolve([f"data.sources={json.dumps([{'name': 'jsonl', 'path': str(j)}])}", "preset=clip"])[0], 96)
    (w,) = [line for line in c.summary_lines() if line.startswith("warning:")]
    assert w.startswith("warning: data.sources[0] (jsonl): 1 of 12 records has no patient id ('patient' blank or missing): it is split")
    # all ids present: nothing said
    full = _csv(tmp_path / "f.csv", "image_path,report,patient_id", [f"i{i}.png,Heart normal {i}.,p{i // 4}" for i in range(32)])
    c = build_corpus(resolve(["data=csv", f"data.path={full}", "preset=clip"])[0], 96)
    assert c.sources[0].no_patient == 0 and not [line for line in c.summary_lines() if line.startswith("warning:")]


# --- one image listed twice by one source (A67) ----------------------------------------------

def test_duplicate_rows_of_one_csv_are_dropped_with_a_warning_and_a_note(tmp_path):
    """Two rows naming one image doubled its sampling weight silently: the first is kept, the
    others dropped, counted, warned about and noted in split.json."""
    for i in range(20):
        _img(tmp_path / f"i{i}.png", i)
    rows = [f"i{i}.png,Heart normal {i}.,p{i},{i % 2}" for i in range(20)]
    rows += ["i4.png,Heart normal 4.,p4,0", "./i4.png,Heart normal again.,p4,0", "sub/../i7.png,Heart normal 7.,p7,1"]
    p = _csv(tmp_path / "d.csv", "image_path,report,patient_id,Cardiomegaly", rows)
    c = build_corpus(resolve(["data=csv", f"data.path={p}", "preset=clip"])[0], 96)
    (s,) = c.sources
    assert s.duplicates == 3 and s.records == 20 and len(s.train_records) + len(s.held_records) == 20
    assert len(c.train) == len(s.train_records)  # each image sampled once an epoch
    four = [r for r in (*s.train_records, *s.held_records) if r.id.endswith("i4.png")]
    assert [r.report for r in four] == ["Heart normal 4."]  # the first row kept
    (w,) = [line for line in c.summary_lines() if line.startswith("warning:")]
    assert w == (f"warning: data (csv): 3 records dropped, their image listed again by the source (e.g. {tmp_path / 'i4.png'}): "
                 f"each image is read once, the first of its records kept (docs/assumptions.md A67)")
    rec = s.record()
    assert rec["duplicates_dropped"] == 3 and rec["records"] == 20 and "3 records dropped" in rec["note"]
    # the same image in two sources is not dropped (each source keeps its own weight)
    q = _csv(tmp_path / "e.csv", "image_path,report", [f"i{i}.png,Other {i}." for i in range(20)])
    c = build_corpus(resolve([f"data.sources={json.dumps([{'name': 'csv', 'path': str(q)}, {'name': 'csv', 'path': str(q)}])}",
                              "preset=clip"])[0], 96)
    assert [x.duplicates for x in c.sources] == [0, 0]


# --- a file option that names a folder (and a folder option that names a file) ----------------

def test_a_file_option_naming_a_folder_says_it_is_a_folder(tmp_path):
    """``path:`` at a folder read "CSV file X does not exist": every adapter's file option goes through
    records.need_file, which says it is a folder and names the files in it that look like one."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.csv").write_text("image_path\n")
    (tmp_path / "d" / "notes.txt").write_text("x")
    cfg = resolve(["data=csv", f"data.path={tmp_path / 'd'}", "preset=clip"])[0]
    with pytest.raises(MaskkitError) as e:
        build_corpus(cfg, 96)
    assert one_line(e) == f"data.path: {tmp_path / 'd'} is a folder; expected a CSV file (it holds train.csv)"
    srcs = json.dumps([{"name": "csv", "path": str(tmp_path)}])
    with pytest.raises(MaskkitError) as e:
        build_corpus(resolve([f"data.sources={srcs}", "preset=clip"])[0], 96)
    assert one_line(e) == f"data.sources[0] (csv).path: {tmp_path} is a folder; expected a CSV file"
    jsonl_plugin()
    with pytest.raises(MaskkitError) as e:
        build_corpus(resolve(["data=jsonl", f"data.path={tmp_path / 'd'}", "preset=clip"])[0], 96)
    assert one_line(e) == f"data.path: {tmp_path / 'd'} is a folder; expected a JSON-lines file"
    # a folder option naming a file
    with pytest.raises(MaskkitError) as e:
        build_corpus(resolve(["data=mimic", f"data.root={tmp_path / 'd' / 'train.csv'}", "preset=clip"])[0], 96)
    assert one_line(e) == f"data.root: {tmp_path / 'd' / 'train.csv'} is a file; expected a folder"


# --- an empty held-out part: advice that fits the source ---------------------------------------

def test_an_empty_held_out_part_gives_advice_that_fits_each_source(tmp_path, capsys):
    """The end-of-run line, eval zeroshot and eval finetune named data.val_n (a phantoms key) for a
    CSV source: each now says per source what changes it (Corpus.empty_held_out_line)."""
    import io

    from rich.console import Console

    from maskkit.train import train

    for i in range(3):
        _img(tmp_path / f"i{i}.png", i)
    p = _csv(tmp_path / "d.csv", "image_path,report,patient_id", [f"i{i}.png,Heart normal {i}.,p{i}" for i in range(3)])
    seed = next(k for k in range(50) if not split_by_patient_held(p, k))
    c = build_corpus(resolve(["data=csv", f"data.path={p}", "preset=clip", f"train.seed={seed}"])[0], 96)
    assert c.empty_held_out_line() == (f"csv path={p} holds out no data: data (csv): none of its 3 patients held out (each with "
                                       f"probability 0.1; no key sets it): another train.seed draws again, or give it more patients")
    assert "val_n" not in c.empty_held_out_line()
    c = build_corpus(resolve(["data.val_n=0", "data.n=8", "preset=clip"])[0], 96)
    assert c.empty_held_out_line().endswith("data (phantoms) holds none out by its own split (data.val_n=0; set data.val_n above 0)")
    srcs = json.dumps([{"name": "phantoms", "n": 8, "val_n": 0}])
    c = build_corpus(resolve([f"data.sources={srcs}", "preset=clip"])[0], 96)
    assert c.empty_held_out_line().endswith("data.sources[0] (phantoms) holds none out by its own split "
                                            "(data.sources[0] (phantoms).val_n=0; set data.sources[0] (phantoms).val_n above 0)")
    # the end of a run that asked for an evaluation says it
    from run_helpers import SMALL

    out = io.StringIO()
    args = [a for a in SMALL if not a.startswith(("runtime.evaluations", "data.n", "data.val_n"))]
    train(*resolve([*args, "data=csv", f"data.path={p}", f"train.seed={seed}", "train.steps=1", "train.batch_size=2", f"runtime.out_dir={tmp_path}",
                    "runtime.evaluations=[zeroshot]", "preset=clip"]), console=Console(file=out, width=400))
    assert "runtime.evaluations (zeroshot) not run: csv path=" in out.getvalue() and "another train.seed draws again" in out.getvalue()


def split_by_patient_held(p, seed):
    from maskkit.data.build import VAL_FRACTION, split_by_patient

    return split_by_patient(load_table("csv", path=str(p)).records, VAL_FRACTION, seed)[1]
