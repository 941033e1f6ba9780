"""Text files as users' tools write them: a UTF-8 byte-order mark and CRLF line
ends (Excel's "CSV UTF-8"), header cells with spaces, label values outside {0, 1}, numeric
columns that are not labels. Every file is a real file written here."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from maskkit.data.records import (DataError, Record, Table, check_label_values, covidx, csv_label_columns,
                                  generic_csv, load_table, mimic_report, openi, read_csv, rsna)
from maskkit.errors import TextFileError

BOM = b"\xef\xbb\xbf"

ROWS = [["image_path", "report", "patient_id", "Edema", "Cardiomegaly"],
        ["a.png", "Mild edema.", "p1", "1", "0"],
        ["b.png", "Normal heart, clear lungs.", "p2", "0", ""],
        ["c.png", "Café-au-lait: heart enlarged.", "p3", "", "1"]]


def write_csv(path, rows, *, bom=False, crlf=False, gz=False, encoding="utf-8"):
    """``rows`` as CSV bytes the way a tool writes them (quoting cells that hold a comma)."""
    def cell(c):
        return f'"{c}"' if "," in c else c
    text = ("\r\n" if crlf else "\n").join(",".join(cell(c) for c in r) for r in rows) + ("\r\n" if crlf else "\n")
    data = (BOM if bom else b"") + text.encode(encoding)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def table_facts(t: Table):
    return [(r.id, r.report, r.patient_id, {k: (None if math.isnan(v) else v) for k, v in r.labels.items()}) for r in t.records], t.label_names


# --- 4a: byte-order mark, CRLF, header whitespace ---------------------------------------------------------------

@pytest.mark.parametrize("bom, crlf, gz", [(True, True, False), (True, False, False), (False, True, False), (True, True, True)])
def test_excel_csv_utf8_reads_like_plain_utf8(tmp_path, bom, crlf, gz):
    plain = generic_csv(write_csv(tmp_path / "plain.csv", ROWS))
    other = generic_csv(write_csv(tmp_path / ("excel.csv.gz" if gz else "excel.csv"), ROWS, bom=bom, crlf=crlf, gz=gz))
    assert table_facts(other) == table_facts(plain)
    assert plain.label_names == ("Edema", "Cardiomegaly")
    assert [r.report for r in other.records][2] == "Café-au-lait: heart enlarged."
    assert [r.id for r in other.records] == ["a.png", "b.png", "c.png"]  # no '\ufeff' and no '\r' anywhere


def test_header_cells_with_spaces_name_the_stripped_column(tmp_path):
    rows = [[" image_path ", " report", "patient_id ", " Edema "]] + [r[:4] for r in ROWS[1:]]
    t = generic_csv(write_csv(tmp_path / "spaced.csv", rows, bom=True, crlf=True))
    assert t.label_names == ("Edema",)
    assert [r.report for r in t.records][0] == "Mild edema." and t.records[0].patient_id == "p1"


def test_a_header_naming_one_column_twice_is_one_line(tmp_path):
    rows = [["image_path", "Edema", " Edema"], ["a.png", "1", "0"]]
    with pytest.raises(DataError, match=r"dup.csv: column 'Edema' appears twice in the header \(cells 2 and 3\)$"):
        read_csv(write_csv(tmp_path / "dup.csv", rows))


def test_unnamed_trailing_columns_are_ignored_and_extra_cells_refused(tmp_path):
    rows = [["image_path", "Edema", "", ""], ["a.png", "1", "", ""], ["b.png", "0"]]
    assert read_csv(write_csv(tmp_path / "t.csv", rows)) == [{"image_path": "a.png", "Edema": "1"},
                                                             {"image_path": "b.png", "Edema": "0"}]
    bad = tmp_path / "bad.csv"
    bad.write_text("image_path,report\na.png,Heart normal, lungs clear\n")
    with pytest.raises(DataError, match=r"bad.csv: row 2 has 3 cells, the header 2; quote a cell that holds a comma$"):
        read_csv(bad)


def test_missing_column_message_lists_clean_names(tmp_path):
    with pytest.raises(DataError, match=r"m.csv: missing column 'image_path'; it has path, report$"):
        read_csv(write_csv(tmp_path / "m.csv", [["path", "report"], ["a.png", "x"]], bom=True, crlf=True), ["image_path"])


@pytest.mark.parametrize("encoding, data, message", [
    ("utf-16", None, r"u16.csv: UTF-16 text \(it starts with a UTF-16 byte-order mark\); save it as UTF-8"),
    ("cp1252", None, r"u16.csv: not UTF-8 text \(byte 0xe9 at offset \d+\); save it as UTF-8"),
])
def test_text_that_is_not_utf8_is_one_line(tmp_path, encoding, data, message):
    path = write_csv(tmp_path / "u16.csv", ROWS, encoding=encoding)
    with pytest.raises(TextFileError, match=message):
        generic_csv(path)


def test_every_text_reader_takes_a_bom(tmp_path):
    """covidx split files, Open-i XML, MIMIC report .txt, composition / config / sweep files,
    fine-tuning's split files: the mark is never part of the text."""
    from maskkit.compose import load_spec
    from maskkit.config import resolve
    from maskkit.eval.finetune import checksum, read_splits
    from maskkit.sweep import load_sweep

    (tmp_path / "train").mkdir()
    (tmp_path / "train.txt").write_bytes(BOM + b"p7 a.png positive src\r\np8 b.png negative src\r\n")
    t = covidx(tmp_path)
    assert [r.patient_id for r in t.records] == ["p7", "p8"] and t.records[0].labels == {"COVID-19": 1.0}

    xml = tmp_path / "openi"
    xml.mkdir()
    (xml / "1.xml").write_bytes(BOM + b'<?xml version="1.0" encoding="utf-8"?>\r\n<eCitation><uId id="CXR1"/><Abstract>'
                                b'<AbstractText Label="FINDINGS">Heart normal.</AbstractText></Abstract></eCitation>\r\n')
    assert [(r.id, r.report) for r in openi(xml).records] == [("CXR1", "FINDINGS: Heart normal.")]

    rep = tmp_path / "s1.txt"
    rep.write_bytes(BOM + b"FINDINGS: Small left effusion.\r\nIMPRESSION: Effusion.\r\n")
    assert mimic_report(rep) == "FINDINGS: Small left effusion. IMPRESSION: Effusion."

    spec = {"random": {"ratio": 0.5}}
    (tmp_path / "m.json").write_bytes(BOM + json.dumps(spec).encode())
    (tmp_path / "m.yaml").write_bytes(BOM + b"random:\r\n  ratio: 0.5\r\n")
    (tmp_path / "m.toml").write_bytes(BOM + b"[random]\r\nratio = 0.5\r\n")
    for suffix in ("json", "yaml", "toml"):
        assert load_spec(tmp_path / f"m.{suffix}") == spec, suffix

    (tmp_path / "run.yaml").write_bytes(BOM + b"train:\r\n  lr: 0.001\r\n")
    cfg, sources = resolve([f"config={tmp_path / 'run.yaml'}"])
    assert cfg.train.lr == 0.001

    (tmp_path / "sw.yaml").write_bytes(BOM + b"presets: [xlip]\r\nseeds: [0, 1]\r\n")
    assert load_sweep(str(tmp_path / "sw.yaml")).seeds == [0, 1]

    split = tmp_path / "splits"
    split.mkdir()
    ids = ["a", "b"]
    (split / "test.json").write_bytes(BOM + json.dumps({"ids": ids, "n": 2, "seed": 0, "sha256": checksum(ids)}).encode())
    assert read_splits(split)["test"]["ids"] == ids


def test_real_metadata_csvs_read_as_before(tmp_path):
    """The real NIH / PadChest / CheXpert / RSNA metadata files: the same rows as csv.DictReader
    (columns with an empty header name, such as PadChest's index column, are dropped)."""
    import csv

    from conftest import shared_path

    folder = shared_path("metadata")
    for p in sorted(folder.glob("*.csv.gz"))[:4]:
        with gzip.open(p, "rt", encoding="utf-8", newline="") as f:
            old = [{k: v for k, v in row.items() if k} for row in csv.DictReader(f)]
        assert read_csv(p) == old, p.name


# --- 4b: label values and label columns ---------------------------------------------------------------------------

UNCERTAIN = [["image_path", "patient_id", "Edema", "Cardiomegaly"],
             ["a.png", "p1", "1", "-1"],
             ["b.png", "p2", "-1.0", "0"],
             ["c.png", "p3", "", "nan"]]


def test_minus_one_without_a_policy_is_one_line_naming_it(tmp_path):
    path = write_csv(tmp_path / "u.csv", UNCERTAIN)
    with pytest.raises(DataError, match=r"u.csv: row 2, column 'Cardiomegaly': got '-1' \(uncertain\) and no uncertain "
                                        r"policy; set data.options.uncertain to ones, zeros or ignore$"):
        generic_csv(path)


@pytest.mark.parametrize("policy, edema_b, cardio_a", [("ones", 1.0, 1.0), ("zeros", 0.0, 0.0), ("ignore", None, None)])
def test_uncertain_policy_is_the_chexpert_one(tmp_path, policy, edema_b, cardio_a):
    t = generic_csv(write_csv(tmp_path / "u.csv", UNCERTAIN), uncertain=policy)
    facts = {r.id: {k: (None if math.isnan(v) else v) for k, v in r.labels.items()} for r in t.records}
    assert facts["a.png"] == {"Edema": 1.0, "Cardiomegaly": cardio_a}
    assert facts["b.png"] == {"Edema": edema_b, "Cardiomegaly": 0.0}
    assert facts["c.png"] == {"Edema": None, "Cardiomegaly": None}  # blank and 'nan': unknown


def test_bad_policy_name_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"^data.options.uncertain: 'maybe' is not a policy; expected ones, zeros or ignore"):
        generic_csv(write_csv(tmp_path / "u.csv", UNCERTAIN), uncertain="maybe")


@pytest.mark.parametrize("value", ["2", "0.5", "yes", "inf", "-2"])
def test_a_label_value_outside_the_set_names_file_row_column_value(tmp_path, value):
    rows = [["image_path", "Edema"], ["a.png", "1"], ["b.png", value]]
    with pytest.raises(DataError, match=rf"v.csv: row 3, column 'Edema': expected 1, 0, -1 or blank, got '{value}'$"):
        generic_csv(write_csv(tmp_path / "v.csv", rows), label_cols=["Edema"], uncertain="ones")


def test_label_columns_rule_reads_every_row_and_names_what_it_left_out(tmp_path, capsys):
    """age and a study number are numeric but not labels; a flag that is 0/1 in the first 200 rows
    and 2 later is not a label either (the old rule looked at 200 rows)."""
    rows = [["image_path", "age", "study", "follow_up", "view", "Edema", "Nodule", "empty"]]
    for i in range(260):
        rows.append([f"i{i}.png", str(20 + i % 60), str(50000000 + i), "2" if i == 250 else str(i % 2),
                     "PA", str(i % 2), "-1" if i == 3 else "", ""])
    t = generic_csv(write_csv(tmp_path / "r.csv", rows), uncertain="ignore")
    assert t.label_names == ("Edema", "Nodule")
    err = capsys.readouterr().err
    assert err == ("note: data=csv r.csv: label columns are those whose cells are all 1, 0, -1 or blank (Edema, Nodule); "
                   "numeric columns left out: age (e.g. '20'), study (e.g. '50000000'), follow_up (e.g. '2'); choose "
                   "them with the label_cols option\n")
    assert csv_label_columns(read_csv(tmp_path / "r.csv"), ["view", "empty", "Edema"]) == (["Edema"], [])
    # explicit label_cols: one name or a list; a chosen column is checked like any other
    assert generic_csv(tmp_path / "r.csv", label_cols="Edema").label_names == ("Edema",)
    with pytest.raises(DataError, match=r"r.csv: row 2, column 'age': expected 1, 0, -1 or blank, got '20'$"):
        generic_csv(tmp_path / "r.csv", label_cols=["Edema", "age"])


def test_real_nih_dev_csv_labels_are_its_findings(tmp_path):
    """The real nih1000/dev.csv: age, follow_up, width and height are numeric but not labels."""
    from conftest import shared_path

    t = generic_csv(shared_path("nih1000", "dev.csv"))
    assert t.label_names[0] == "no_finding" and len(t.label_names) == 15
    assert not {"age", "follow_up", "width", "height"} & set(t.label_names)
    check_label_values(t)


def test_rsna_target_outside_0_1_is_one_line(tmp_path):
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\nabc,,,,,1\ndef,,,,,2\n")
    with pytest.raises(DataError, match=r"stage_2_train_labels.csv: row 3, column 'Target': expected 1 or 0, got '2'$"):
        rsna(tmp_path)


def test_every_table_leaving_load_table_has_labels_in_0_1_nan():
    bad = Table("custom", [Record("r1", None, labels={"Edema": 1.0}), Record("r2", None, labels={"Edema": -1.0})], ("Edema",))
    with pytest.raises(DataError, match=r"^custom: record 'r2', label 'Edema' is -1.0; expected 1, 0 or unknown \(NaN\)$"):
        check_label_values(bad)
    check_label_values(Table("ok", [Record("r", None, labels={"a": 1.0, "b": 0.0, "c": float("nan")})], ("a", "b", "c")))


def test_load_table_checks_what_the_adapter_returns(tmp_path, monkeypatch):
    """A dataset adapter that returns a label value outside {0, 1, NaN} (a plugin's, say) is
    stopped at load, not by a traceback in the end-of-run zero-shot."""
    from test_plugins import install_fake_dist

    monkeypatch.setenv("MASKKIT_LOAD_PLUGINS", "")  # no other third-party plugin: only this one is added
    install_fake_dist(tmp_path, monkeypatch, "maskkit-sloppy", "mk_sloppy", '''
from maskkit import hookimpl
from maskkit.data.records import Record, Table
def sloppy(root: str):
    return Table("sloppy", [Record("x", None, labels={"Edema": 2.0})], ("Edema",))
@hookimpl
def register_datasets(register):
    register("sloppy", sloppy)
''')
    with pytest.raises(DataError, match=r"^sloppy: record 'x', label 'Edema' is 2.0; expected 1, 0 or unknown \(NaN\)$"):
        load_table("sloppy", root=str(tmp_path))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "maskkit.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _image_csv(tmp_path, n=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = [["image_path", "report", "patient_id", "Edema", "Cardiomegaly"]]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / f"x{i}.png")
        rows.append([f"x{i}.png", f"Case {i}: heart size normal.", f"p{i}", ["1", "0", "-1"][i % 3], str(i % 2)])
    return write_csv(tmp_path / "runs.csv", rows, bom=True, crlf=True)


TINY = ["train.log_every=1", "runtime.progress=false", "model.mim.decoder_depth=1", "model.mim.decoder_width=32",
        "model.mlm.layers=1", "model.mim.decoder_heads=2", "train.batch_size=4", "train.steps=2", "train.warmup_steps=1"]


@pytest.mark.slow
def test_run_on_an_excel_csv_with_minus_one_labels(tmp_path):
    """The reported input: data=csv with -1 labels trained, then the end-of-run zero-shot died.
    Without a policy the run stops before it starts, in one line; with one it runs to the end,
    zero-shot included."""
    csv = _image_csv(tmp_path)
    out = _cli("run", "data=csv", f"data.path={csv}", *TINY, f"runtime.out_dir={tmp_path}", "runtime.name=u")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (f"error: {csv}: row 4, column 'Edema': got '-1' (uncertain) and no uncertain policy; "
                                  f"set data.options.uncertain to ones, zeros or ignore")
    assert not (tmp_path / "u").exists()
    ok = _cli("run", "data=csv", f"data.path={csv}", 'data.options={"uncertain": "zeros"}', *TINY,
              f"runtime.out_dir={tmp_path}", "runtime.name=z")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "Traceback" not in ok.stderr and "zero-shot" in ok.stdout


def test_the_label_columns_note_names_the_source_entry(tmp_path, capsys):
    import json

    from maskkit.config import resolve
    from maskkit.data.sources import source_specs

    rows = [["image_path", "age", "Edema"]] + [[f"i{i}.png", str(30 + i), str(i % 2)] for i in range(4)]
    p = write_csv(tmp_path / "nihA.csv", rows)
    entries = [{"name": "phantoms"}, {"name": "csv", "path": str(p)}]
    specs = source_specs(resolve([f"data.sources={json.dumps(entries)}"])[0].data)
    capsys.readouterr()
    specs[1].load()
    assert capsys.readouterr().err == (
        "note: data.sources[1] (csv) nihA.csv: label columns are those whose cells are all 1, 0, -1 or blank (Edema); "
        "numeric columns left out: age (e.g. '30'); choose them with data.sources[1] (csv).label_cols\n")
