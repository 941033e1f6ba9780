"""Several sources in one run: data.sources from a config file, roles,
weights as open_clip's upsampling factors, the mixture sampler, per-source counts."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from maskkit.config import resolve
from maskkit.data.build import build_corpus
from maskkit.data.loader import MixtureBatchSampler
from maskkit.data.records import CHEXPERT_LABELS
from maskkit.distributed import DistInfo
from maskkit.errors import MaskkitError
from maskkit.train import train

TINY = ["train.batch_size=4", "train.log_every=1", "train.warmup_steps=1", "runtime.progress=false",
        "runtime.evaluations=[]", "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1",
        "model.mim.decoder_heads=2"]


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), value, np.uint8)).save(path)


def mimic_root(root, n=20):
    """MIMIC-CXR-JPG in its real layout: metadata, labeler CSV, the report tree and JPEGs."""
    meta = ["dicom_id,subject_id,study_id,ViewPosition"]
    lab = ["subject_id,study_id," + ",".join(CHEXPERT_LABELS)]
    for i in range(n):
        sid, st = f"1{i:07d}", f"5{i:07d}"
        meta.append(f"d{i},{sid},{st},{'PA' if i % 3 else 'LATERAL'}")
        lab.append(f"{sid},{st}," + ",".join(["1.0" if k == i % 14 else "" for k in range(14)]))
        folder = root / "files" / f"p{sid[:2]}" / f"p{sid}"
        _img(folder / f"s{st}" / f"d{i}.jpg", 40 + i)
        (folder / f"s{st}.txt").write_text(f" FINDINGS: \n Heart size normal case {i}.\n\n IMPRESSION: \n No acute process.\n")
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(meta) + "\n")
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text("\n".join(lab) + "\n")
    return root


def padchest_root(root, n=30):
    rows = ["ImageID,ImageDir,Projection,Labels,StudyID,PatientID"]
    for i in range(n):
        _img(root / "0" / f"im{i}.png", 100 + i)
        rows.append(f"im{i}.png,0,{'PA' if i % 2 else 'L'},\"['normal']\",st{i},pat{i}")
    (root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv").write_text("\n".join(rows) + "\n")
    return root


def csv_file(path, n=24, reports=True):
    rows = ["image_path,report,patient_id,Cardiomegaly"]
    for i in range(n):
        _img(path.parent / f"{path.stem}{i}.png", i * 5)
        rows.append(f"{path.stem}{i}.png,{'Heart is normal case %d.' % i if reports else ''},{path.stem}-p{i},{i % 2}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_the_issues_yaml_trains_two_sources_and_records_each(tmp_path):
    """Exactly the issue's YAML (roots filled in), from a config= file: a run with per-source counts
    in split.json, in metrics.jsonl and in its log lines."""
    m, p = mimic_root(tmp_path / "mimic-cxr-jpg"), padchest_root(tmp_path / "padchest")
    conf = tmp_path / "corpus.yaml"
    conf.write_text(f"""data:
  sources:
    - {{name: mimic, root: {m}, weight: 1.0}}
    - {{name: padchest, root: {p}, role: image_only, weight: 0.5}}
""")
    cfg, src = resolve([f"config={conf}", *TINY, "train.steps=3", f"runtime.out_dir={tmp_path}", "runtime.name=r"])
    assert src["data.sources"] == f"file:{conf}"
    from rich.console import Console

    log = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    train(cfg, src, console=log)
    log.file.close()
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    a, b = split["sources"]
    assert (a["name"], a["role"], a["records"], b["name"], b["role"], b["records"]) == ("mimic", "paired", 20, "padchest", "image_only", 30)
    assert a["train"] + a["held_out"] == 20 and b["train"] + b["held_out"] == 30 and a["paired_train"] == a["train"]
    lines = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [sum(l["samples_seen"].values()) for l in lines] == [4, 8, 12]
    text = (tmp_path / "log.txt").read_text()
    assert "source mimic: 20 records" in text and "source padchest: 30 records" in text and "samples seen per source: mimic" in text


def test_csv_sources_roles_and_image_only_drops_reports(tmp_path):
    a, b = csv_file(tmp_path / "a.csv"), csv_file(tmp_path / "b.csv")
    srcs = [{"name": "csv", "path": str(a)}, {"name": "csv", "path": str(b), "role": "image_only", "weight": 2}]
    cfg, _ = resolve([f"data.sources={json.dumps(srcs)}", "preset=clip"])
    c = build_corpus(cfg, 96)
    assert [s.role for s in c.sources] == ["paired", "image_only"] and c.names == ["csv#0", "csv#1"]
    assert all(r is None for r in c.sources[1].train.reports) and any(c.sources[0].train.reports)
    assert len(c.train) == len(c.sources[0].train) + len(c.sources[1].train)
    assert c.train[len(c.sources[0].train)]["report"] is None and c.train[len(c.sources[0].train)]["source"] == 1


def test_role_paired_without_reports_is_one_line(tmp_path):
    a = csv_file(tmp_path / "a.csv", reports=False)
    cfg, _ = resolve([f"data.sources={json.dumps([{'name': 'csv', 'path': str(a), 'role': 'paired'}])}"])
    with pytest.raises(MaskkitError, match=r"^data.sources\[0\] \(csv\).role: paired, but none of its \d+ training records has a report"):
        build_corpus(cfg, 96)


ENTRY_KEYS_LISTED = "an entry takes name, role, weight, cache, options and the dataset's options: "


@pytest.mark.parametrize("entry,message", [
    ({"name": "csv", "path": "x.csv", "bogus": 1}, "data.sources[0] (csv).bogus: not a key of a source entry nor an option of dataset 'csv'; "
                                                   + ENTRY_KEYS_LISTED + "path, image_col, report_col"),
    # a misspelt entry key: the suggestion covers the entry's own keys and the adapter's options, all listed
    ({"name": "mimic", "root": "/m", "rol": "image_only"}, "data.sources[0] (mimic).rol: not a key of a source entry nor an option of "
                                                          "dataset 'mimic'; did you mean 'role', 'root'?; " + ENTRY_KEYS_LISTED + "root, split, views"),
    ({"name": "mimic", "root": "/m", "wieght": 2}, "data.sources[0] (mimic).wieght: not a key of a source entry nor an option of "
                                                   "dataset 'mimic'; did you mean 'weight'?"),
    ({"name": "mimic", "root": "/m", "cahce": "/c"}, "data.sources[0] (mimic).cahce: not a key of a source entry nor an option of "
                                                     "dataset 'mimic'; did you mean 'cache'?"),
    ({"name": "mimic", "root": "/m", "options": {"veiws": ["PA"]}}, "data.sources[0] (mimic).options.veiws: dataset 'mimic' has no "
                                                                    "option 'veiws'; did you mean 'views'?"),
    ({"name": "mimic", "root": "/m", "options": {"role": "paired"}}, "data.sources[0] (mimic).options.role: 'role' is a key of the entry, "
                                                                     "not an adapter option; set it beside name"),
    ({"name": "csv", "path": "x.csv", "options": {"image_col": 3}}, "data.sources[0] (csv).options.image_col: dataset 'csv' option "
                                                                    "'image_col': Input should be a valid string"),
    ({"name": "padchest", "root": "/p", "views": "PA"}, "data.sources[0] (padchest).views: dataset 'padchest' option 'views': Input should be a valid list"),
    ({"name": "mimc", "root": "/m"}, "data.sources[0] (mimc).name: unknown dataset 'mimc'; did you mean 'mimic'?"),
    ({"name": "csv", "path": "x.csv", "weight": "heavy"}, "data.sources[0] (csv).weight: expected a finite number >= 0"),
    ({"name": "csv", "path": "x.csv", "role": "pairs"}, "data.sources[0] (csv).role: 'pairs' is not a role; did you mean 'paired'?; "
                                                        "expected one of paired, image_only, auto"),
    ({"root": "/m"}, "data.sources[0]: no 'name'"),
    ({"name": "mimic"}, "data.sources[0] (mimic).root: dataset 'mimic' needs option 'root'"),
    ({"name": "mimic", "root": "/m", "options": {"root": "/n"}}, "data.sources[0] (mimic).root: given both here and as "
                                                                 "data.sources[0] (mimic).options.root; give one"),
    # option values with a fixed set of choices (Literal) fail at resolve time, naming value and choices
    ({"name": "chexpert", "root": "/c", "uncertain": "maybe"}, "data.sources[0] (chexpert).uncertain: dataset 'chexpert' option "
                                                               "'uncertain': 'maybe' is not one of 'ones', 'zeros', 'ignore'"),
    ({"name": "chexpert", "root": "/c", "options": {"blank": "zero"}}, "data.sources[0] (chexpert).options.blank: dataset 'chexpert' "
                                                                       "option 'blank': 'zero' is not one of 'negative', 'unknown'"),
    ({"name": "mimic", "root": "/m", "split": "val"}, "data.sources[0] (mimic).split: dataset 'mimic' option 'split': 'val' is not "
                                                      "one of 'train', 'validate', 'test'"),
    ({"name": "nih", "root": "/n", "views": ["PA", "PAA"]}, "data.sources[0] (nih).views: dataset 'nih' option 'views[1]': 'PAA' is not "
                                                            "one of 'PA', 'AP', 'LATERAL'"),
    ({"name": "csv", "path": "x.csv", "uncertain": "maybe"}, "data.sources[0] (csv).uncertain: dataset 'csv' option 'uncertain': "
                                                             "'maybe' is not one of 'ones', 'zeros', 'ignore'"),
])
def test_bad_source_entry_is_one_line_naming_source_and_key(entry, message):
    with pytest.raises(MaskkitError) as e:
        resolve([f"data.sources={json.dumps([entry])}"])
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_single_source_form_and_its_errors():
    cfg, _ = resolve(["data=mimic", "data.root=/data/mimic", 'data.options={"views": ["PA"]}'])
    from maskkit.data.sources import source_specs

    (s,) = source_specs(cfg.data)
    assert s.options == {"root": "/data/mimic", "views": ["PA"]}
    for args, msg in ((["data=csv", "data.root=/x"], "data.root: dataset 'csv' takes no root; set data.path"),
                      (["data=mimic", "data.root=/x", 'data.options={"view": ["PA"]}'],
                       "data.options.view: dataset 'mimic' has no option 'view'; did you mean 'views'?"),
                      (["data=chexpert", "data.root=/x", 'data.options={"uncertain": "maybe"}'],
                       "data.options.uncertain: dataset 'chexpert' option 'uncertain': 'maybe' is not one of 'ones', 'zeros', 'ignore'"),
                      (["data=mimic", "data.root=/x", 'data.options.views=["PA", "sideways"]'],
                       "data.options.views: dataset 'mimic' option 'views[1]': 'SIDEWAYS' is not one of 'PA', 'AP', 'LATERAL'"),
                      (["data.sources=[{\"name\": \"csv\", \"path\": \"a\"}]", "data.root=/x"], "data.sources: give each source")):
        with pytest.raises(MaskkitError) as e:
            resolve(args)
        assert str(e.value).startswith(msg), str(e.value)


def test_phantoms_are_an_adapter_with_the_single_source_keys():
    cfg, _ = resolve(["data.n=12", "data.val_n=4", "data.seed=3", "data.p_unpaired=0.5"])
    c = build_corpus(cfg, 96)
    (s,) = c.sources
    assert s.adapter.name == "phantoms" and len(c.train) == 12 and len(c.val) == 4
    assert c.train[0]["id"] == "phantom-3-0" and s.held_out_ids[0] == "phantom-3-10000000"
    assert 0 < s.n_paired < 12 and all(r is not None for r in c.val.reports)


# --- the mixture sampler ---------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3])
def test_one_source_of_weight_1_is_the_single_dataset_order(world):
    """One source of weight 1: each rank's batches are torch's DistributedSampler(shuffle, seed,
    drop_last) order of each epoch cut into batches (40 batches: several epochs)."""
    from torch.utils.data import DistributedSampler

    for r in range(world):
        b = MixtureBatchSampler([103], [1.0], 4, 7, DistInfo(r, world))
        ref = DistributedSampler(range(103), num_replicas=world, rank=r, shuffle=True, seed=7, drop_last=True)
        per_epoch = len(ref) // 4
        assert b.per_epoch == per_epoch
        want = []
        for g in range(40):
            ref.set_epoch(g // per_epoch)
            k = g % per_epoch
            want.append(list(ref)[k * 4:(k + 1) * 4])
        assert [b.batch_indices(g) for g in range(40)] == want
        it = iter(b)
        assert [next(it) for _ in range(40)] == want  # what the DataLoader reads


def test_weights_are_upsampling_factors_of_size():
    """open_clip's rule: a source's share is n_k w_k / sum n_j w_j. 100 x 1 and 400 x 0.5 give 1/3
    and 2/3 in every epoch; a factor 0.5 source shows each sample once over two epochs; 2.0 twice
    per epoch."""
    s = MixtureBatchSampler([100, 400], [1.0, 0.5], 10, 0, DistInfo(0, 1))
    per_epoch = [np.bincount(s.epoch_order(e)[1], minlength=2).tolist() for e in range(2)]
    assert per_epoch == [[100, 200], [100, 200]]
    two = np.concatenate([s.epoch_order(e)[0] for e in range(2)])
    assert Counter(two[two >= 100].tolist()) == Counter(range(100, 500))  # every padchest-like sample once in 2 epochs
    up = MixtureBatchSampler([50, 10], [1.0, 2.0], 5, 1, DistInfo(0, 1))
    idx, _ = up.epoch_order(0)
    assert Counter(idx[idx >= 50].tolist()) == Counter({i: 2 for i in range(50, 60)})


def test_mixture_resumes_and_is_exact_under_ddp():
    sizes, weights = [37, 91, 20], [1.0, 0.3, 2.5]
    full = MixtureBatchSampler(sizes, weights, 3, 5, DistInfo(0, 1))
    it = iter(MixtureBatchSampler(sizes, weights, 3, 5, DistInfo(0, 1), start=17))
    assert [next(it) for _ in range(30)] == [full.batch_indices(g) for g in range(17, 47)]
    ranks = [MixtureBatchSampler(sizes, weights, 3, 5, DistInfo(r, 2)) for r in range(2)]
    for g in range(25):
        got = sorted(ranks[0].batch_indices(g) + ranks[1].batch_indices(g))
        src = ranks[0].batch_sources(g)
        assert len(got) == 6 and src.sum() == 6
        off = np.cumsum([0] + sizes)
        assert np.bincount(np.searchsorted(off, got, side="right") - 1, minlength=3).tolist() == src.tolist()
    assert ranks[0].samples_seen(25).tolist() == sum(ranks[0].batch_sources(g) for g in range(25)).tolist()


def test_no_paired_sample_says_so_before_step_1(tmp_path):
    a = csv_file(tmp_path / "a.csv", reports=False)
    common = [*TINY, "data=csv", f"data.path={a}", "train.steps=1", f"runtime.out_dir={tmp_path}"]
    with pytest.raises(MaskkitError, match=r"no source of csv path=.* holds a paired .* preset 'clip' trains objectives.align; nothing would train"):
        train(*resolve(["preset=clip", *common, "runtime.name=c"]))
    assert not (tmp_path / "c").exists()
    from rich.console import Console

    out = tmp_path / "log.txt"
    with open(out, "w") as f:
        train(*resolve(["preset=xlip", *common, "runtime.name=x"]), console=Console(file=f, width=300))
    assert "warning: data: no source of csv" in out.read_text() and "objectives.align, objectives.mlm" in out.read_text()


def test_the_shipped_paper_corpus_config_resolves_by_name():
    """config=xlip_paper_corpus: the copy shipped in the package (maskkit/configs), the only one."""
    from pathlib import Path

    from maskkit.data.sources import source_specs

    cfg, src = resolve(["config=xlip_paper_corpus", "scale=paper"])
    a, b = source_specs(cfg.data)
    assert (a.name, a.role, a.weight, b.name, b.role, b.weight) == ("mimic", "paired", 1.0, "padchest", "image_only", 1.0)
    assert a.options["views"] == ["PA", "AP"] and a.options["split"] == "train" and b.options["labels"] == []
    assert src["data.sources"] == "config:xlip_paper_corpus" and cfg.model.arch != "maskkit-tiny"
    repo = Path(__file__).resolve().parents[1]
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("xlip_paper_corpus.yaml")) == ["maskkit/configs/xlip_paper_corpus.yaml"]
    # the same with .yaml, and a root of one entry set on the command line
    cfg, src = resolve(["config=xlip_paper_corpus.yaml", "data.sources.1.root=/my/padchest"])
    assert source_specs(cfg.data)[1].options["root"] == "/my/padchest" and src["data.sources.1.root"] == "cli"


def test_single_source_keys_and_sources_together_are_refused():
    with pytest.raises(MaskkitError, match=r"^data.name=mimic and data.sources: give one"):
        resolve(["data=mimic", 'data.sources=[{"name": "csv", "path": "a.csv"}]'])


# --- errors name the key the user set: data.sources[i] (name).key, or data.root / data.options.X ---

def _sources(*entries):
    return resolve([f"data.sources={json.dumps(list(entries))}", "preset=clip"])[0]


def test_load_time_errors_name_the_source_entrys_key(tmp_path):
    a = csv_file(tmp_path / "a.csv")
    cases = [
        ([{"name": "mimic", "root": "/nonexistent"}], "data.sources[0] (mimic).root: folder /nonexistent does not exist"),
        ([{"name": "csv", "path": str(a)}, {"name": "csv", "path": "/nonexistent/b.csv"}],
         "data.sources[1] (csv).path: CSV file /nonexistent/b.csv does not exist"),
        ([{"name": "csv", "options": {"path": "/nonexistent/b.csv"}}], "data.sources[0] (csv).options.path: CSV file /nonexistent/b.csv does not exist"),
        ([{"name": "csv", "path": str(a), "cache": str(tmp_path)}],
         f"data.sources[0] (csv).cache: {tmp_path} is not a prepared cache (no index.json); run maskkit prepare"),
        ([{"name": "rsna", "root": str(tmp_path), "views": ["PA"]}],
         "data.sources[0] (rsna).views: filtering RSNA by view needs data.sources[0] (rsna).headers_csv (the DICOM-header CSV)"),
        # an error in the data (not a setting) is prefixed with the entry it came from
        ([{"name": "nih", "root": str(tmp_path)}], f"data.sources[0] (nih): {tmp_path}: no NIH Data_Entry CSV found"),
    ]
    for entries, message in cases:
        with pytest.raises(MaskkitError) as e:
            build_corpus(_sources(*entries), 96)
        assert str(e.value) == message or str(e.value).startswith(message + ";"), str(e.value)
    # a -1 without a policy names the entry's own uncertain key
    bad = tmp_path / "u.csv"
    bad.write_text("image_path,patient_id,Edema\nx.png,p1,-1\n")
    with pytest.raises(MaskkitError) as e:
        build_corpus(_sources({"name": "csv", "path": str(a)}, {"name": "csv", "path": str(bad)}), 96)
    assert str(e.value) == (f"{bad}: row 2, column 'Edema': got '-1' (uncertain) and no uncertain policy; "
                            "set data.sources[1] (csv).uncertain to ones, zeros or ignore")
    # the single-source form keeps its keys
    for args, message in ((["data=mimic", "data.root=/nonexistent"], "data.root: folder /nonexistent does not exist"),
                          (["data=csv", f"data.path={bad}"], "set data.options.uncertain to ones, zeros or ignore"),
                          (["data=csv", f"data.path={a}", f"data.cache={tmp_path}"], f"data.cache: {tmp_path} is not a prepared cache")):
        with pytest.raises(MaskkitError) as e:
            build_corpus(resolve([*args, "preset=clip"])[0], 96)
        assert message in str(e.value) and (str(e.value).startswith("data.") or message.startswith("set")), str(e.value)


def test_option_errors_survive_pickling():
    """A sweep's worker process sends its error back pickled: the key stays as it was spelt."""
    import pickle

    from maskkit.data.records import OptionError
    from maskkit.data.sources import SourceSpec

    e = OptionError("root", "{key}: folder /x does not exist; see {key:views}")
    assert str(e) == "data.root: folder /x does not exist; see data.options.views"
    spec = SourceSpec(2, "nih", "auto", 1.0, where="data.sources[2]", nested=frozenset({"views"}))
    named = OptionError(e.option, e.named(spec.key))
    for x in (e, named):
        y = pickle.loads(pickle.dumps(x))
        assert type(y) is OptionError and str(y) == str(x)
    assert str(named) == "data.sources[2] (nih).root: folder /x does not exist; see data.sources[2] (nih).options.views"


def test_the_cli_names_the_entry_key_in_one_line(tmp_path):
    import subprocess
    import sys

    def err(*args):
        out = subprocess.run([sys.executable, "-m", "maskkit.cli", *args], capture_output=True, text=True, timeout=600)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        return out.stderr.strip().splitlines()

    src = json.dumps([{"name": "mimic", "root": "/nonexistent"}])
    assert err("run", f"data.sources={src}", f"runtime.out_dir={tmp_path}") == [
        "error: data.sources[0] (mimic).root: folder /nonexistent does not exist"]
    assert err("prepare", "nih", "--out", str(tmp_path / "c"), "-o", "root=/nonexistent") == [
        "error: --option root: folder /nonexistent does not exist"]
    # a value outside an option's choices fails when the config resolves (config show reads no file)
    assert err("config", "show", "data=chexpert", "data.root=/nonexistent", 'data.options={"uncertain": "maybe"}') == [
        "error: data.options.uncertain: dataset 'chexpert' option 'uncertain': 'maybe' is not one of 'ones', 'zeros', 'ignore'"]


# --- split.json: each source's rule, and a note when a part comes out empty ------------------

def test_split_record_names_each_sources_rule_and_notes_an_empty_part(tmp_path):
    from maskkit.data.build import VAL_FRACTION, split_by_patient
    from maskkit.data.records import load_table

    big, small = csv_file(tmp_path / "big.csv", n=40), csv_file(tmp_path / "small.csv", n=3)
    seed = next(k for k in range(50) if not split_by_patient(load_table("csv", path=str(small)).records, VAL_FRACTION, k)[1])
    cfg = resolve([f"data.sources={json.dumps([{'name': 'csv', 'path': str(big)}, {'name': 'csv', 'path': str(small)}])}",
                   "preset=clip", f"train.seed={seed}"])[0]
    c = build_corpus(cfg, 96)
    rec = c.split_record()
    a, b = rec["sources"]
    assert "rule" not in rec and a["rule"] == b["rule"] and a["rule"].startswith("split_by_patient:")
    assert "phantom" not in a["rule"] and f"below {VAL_FRACTION}" in a["rule"]
    assert "note" not in a and (b["patients"], b["held_out"], b["train"]) == (3, 0, 3)
    note = ("data.sources[1] (csv): 3 patients, 0 held out (each patient is held out with probability 0.1: 0.3 expected "
            "of 3; another train.seed draws again)")
    assert b["note"] == note and f"note: {note}" in c.summary_lines()
    # the phantoms' rule is their own
    (p,) = build_corpus(resolve(["data.n=8", "data.val_n=2"])[0], 96).split_record()["sources"]
    assert p["rule"].startswith("the phantoms adapter's own split: (train, held-out) phantoms: the held-out phantoms are generated apart")
    assert "note" not in p
    (p0,) = build_corpus(resolve(["data.n=8", "data.val_n=0"])[0], 96).split_record()["sources"]
    assert p0["held_out"] == 0 and "note" not in p0  # data.val_n=0 asks for it: no note
    # the single-source form names the source by its adapter
    one = build_corpus(resolve(["data=csv", f"data.path={small}", "preset=clip", f"train.seed={seed}"])[0], 96)
    assert one.sources[0].note == "source csv: 3 patients, 0 held out " + note.split(" 0 held out ", 1)[1]


# --- ids that repeat across sources: keyed by (source, id) ----------------------------------

def test_ids_and_patients_repeating_across_sources_stay_apart(tmp_path):
    """Two CSVs whose rows use the same image file names and patient ids: fine-tuning's keys, its
    patient-level splits and its row index keep the sources apart (before, the second source's
    rows replaced the first's in the id index, and a patient id merged two patients)."""
    from maskkit.eval.finetune import dataset_index, held_out_splits, pretraining_data

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = csv_file(tmp_path / "a" / "x.csv", n=30), csv_file(tmp_path / "b" / "x.csv", n=30)
    cfg = resolve([f"data.sources={json.dumps([{'name': 'csv', 'path': str(a)}, {'name': 'csv', 'path': str(b)}])}",
                   "preset=clip", "train.seed=3"])[0]
    c = build_corpus(cfg, 96)
    ds, _, recs, test_ids = pretraining_data(cfg, 96, corpus=c)
    assert len(ds.keys) == len(set(ds.keys)) == len(ds) == 60 and len(set(ds.ids)) == 30
    index = dataset_index(ds)
    assert len(index) == 60
    for (source, rid), row in index.items():
        item = ds[row]
        assert ds.names[item["source"]] == source and item["id"] == rid
    assert test_ids == {(n, i) for n, s in zip(c.names, c.sources) for i in s.held_out_ids}
    sp = held_out_splits(recs, test_ids, seed=0)
    held_patients = {p for k, p in recs if k in test_ids}
    assert set(sp["test"]["ids"]) == test_ids
    for name in ("train_0.01", "train_0.1", "train_1"):
        assert not {p for k, p in recs if k in set(sp[name]["ids"])} & held_patients
    assert {k[0] for k in sp["train_1"]["ids"]} == {"csv#0", "csv#1"}
    # 60 patients (30 per source, not 30 shared): 1% of the 54 not held out is one patient, one image
    assert len({p for _, p in recs}) == 60 and len(sp["train_0.01"]["ids"]) == 1


def test_a_paired_source_without_reports_names_its_role_key(tmp_path):
    m = mimic_root(tmp_path / "m", n=12)
    for t in m.rglob("*.txt"):
        t.unlink()
    with pytest.raises(MaskkitError) as e:
        build_corpus(_sources({"name": "mimic", "root": str(m)}), 96)
    assert str(e.value).startswith("data.sources[0] (mimic).role: paired (the role dataset 'mimic' declares), but none of its ")
    with pytest.raises(MaskkitError) as e:
        build_corpus(resolve(["data=mimic", f"data.root={m}", "preset=clip"])[0], 96)
    assert str(e.value).startswith("data (mimic): dataset 'mimic' is paired, but none of its ")
