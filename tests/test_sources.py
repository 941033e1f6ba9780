"""Several sources in one run (issue 18 section 1): data.sources from a config file, roles,
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
        "runtime.eval_zeroshot=false", "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1",
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
    with pytest.raises(MaskkitError, match=r"^data.sources\[0\] \(csv\): role paired, but none of its \d+ training records has a report"):
        build_corpus(cfg, 96)


@pytest.mark.parametrize("entry,message", [
    ({"name": "csv", "path": "x.csv", "bogus": 1}, "data.sources[0] (csv): dataset 'csv' has no option 'bogus'"),
    ({"name": "csv", "path": "x.csv", "options": {"image_col": 3}}, "data.sources[0] (csv): dataset 'csv' option 'image_col': Input should be a valid string"),
    ({"name": "padchest", "root": "/p", "views": "PA"}, "data.sources[0] (padchest): dataset 'padchest' option 'views': Input should be a valid list"),
    ({"name": "mimc", "root": "/m"}, "data.sources[0]: unknown dataset 'mimc'; did you mean 'mimic'?"),
    ({"name": "csv", "path": "x.csv", "weight": "heavy"}, "data.sources[0] (csv).weight: expected a finite number >= 0"),
    ({"name": "csv", "path": "x.csv", "role": "pairs"}, "data.sources[0] (csv).role: 'pairs' is not a role"),
    ({"root": "/m"}, "data.sources[0]: no 'name'"),
    ({"name": "mimic"}, "data.sources[0] (mimic): dataset 'mimic' needs option 'root'"),
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
                       "data.options: dataset 'mimic' has no option 'view'; did you mean 'views'?"),
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


def test_the_shipped_paper_corpus_config_resolves():
    from pathlib import Path

    from maskkit.data.sources import source_specs

    conf = Path(__file__).resolve().parents[1] / "configs" / "xlip_paper_corpus.yaml"
    cfg, src = resolve([f"config={conf}", "scale=paper"])
    a, b = source_specs(cfg.data)
    assert (a.name, a.role, a.weight, b.name, b.role, b.weight) == ("mimic", "paired", 1.0, "padchest", "image_only", 1.0)
    assert a.options["views"] == ["PA", "AP"] and a.options["split"] == "train" and b.options["labels"] == []
    assert src["data.sources"] == f"file:{conf}" and cfg.model.arch != "maskkit-tiny"


def test_single_source_keys_and_sources_together_are_refused():
    with pytest.raises(MaskkitError, match=r"^data.name=mimic and data.sources: give one"):
        resolve(["data=mimic", 'data.sources=[{"name": "csv", "path": "a.csv"}]'])
