"""Evaluation: zero-shot metrics and bootstrap, split files, mask-lesion overlap, sweeps."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from maskkit.eval.finetune import checksum, make_splits, read_splits, write_splits
from maskkit.eval.masks import Features, measure
from maskkit.eval.zeroshot import bootstrap_ci, point_metrics, prompt_pair, score
from maskkit.compose import build_strategy


def test_point_metrics_hand_computed():
    y = np.array([1, 0, 0, 1])
    p = np.array([0.6, 0.4, 0.7, 0.2])
    m = point_metrics(y, p)
    # predictions at 0.5: [1, 0, 1, 0] -> TP 1, FP 1, FN 1, TN 1
    assert m["f1"] == pytest.approx(0.5) and m["acc"] == pytest.approx(0.5)
    # AUC: pairs (pos, neg): (0.6 > 0.4) (0.6 < 0.7) (0.2 < 0.4) (0.2 < 0.7) -> 1/4
    assert m["auc"] == pytest.approx(0.25)


def test_bootstrap_hand_computed():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.8, 0.9])  # perfectly separated: every resample has AUC = F1 = ACC = 1
    ci = bootstrap_ci(y, p, n_boot=200, seed=0)
    assert ci == {"auc": (1.0, 1.0), "f1": (1.0, 1.0), "acc": (1.0, 1.0)}
    # the interval brackets the point estimate on noisy data, and is reproducible
    rng = np.random.default_rng(1)
    y2 = rng.integers(0, 2, 200)
    p2 = np.clip(y2 * 0.3 + rng.random(200) * 0.7, 0, 1)
    a, b = bootstrap_ci(y2, p2, 300, seed=3), bootstrap_ci(y2, p2, 300, seed=3)
    auc = point_metrics(y2, p2)["auc"]
    assert a == b and a["auc"][0] < auc < a["auc"][1]


def test_undefined_labels_stay_out_of_the_mean():
    y = np.array([[1, 0, np.nan], [0, 0, 1], [1, 0, np.nan], [0, 0, 0]])
    p = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.9], [0.8, 0.2, 0.5], [0.1, 0.4, 0.1]])
    r = score(y, p, ["a", "b", "c"], n_boot=0)
    assert r.per_label["b"] is None and r.undefined == ["b"]
    assert r.per_label["c"]["n"] == 2  # NaN labels ignored
    assert r.mean("auc") == pytest.approx(1.0) and not np.isnan(r.mean("auc"))


def test_no_finding_has_its_own_prompts():
    assert prompt_pair("no_finding") == prompt_pair("No Finding")
    pos, neg = prompt_pair("No Finding")
    assert not any("no no finding" in t.lower() for t in pos + neg)
    # the default ends each prompt as a report sentence ends (A32); CheXzero's bare phrase stays available
    assert prompt_pair("Pleural Effusion") == (["pleural effusion."], ["no pleural effusion."])
    assert prompt_pair("Pleural Effusion", style="chexzero") == (["pleural effusion"], ["no pleural effusion"])
    assert prompt_pair("No Finding", style="chexzero")[0][0] + "." == pos[0]
    with pytest.raises(ValueError, match="prompt style 'sentences'"):
        prompt_pair("Pleural Effusion", style="sentences")


def test_the_cli_defaults_are_the_library_defaults():
    """`maskkit eval zeroshot`'s defaults are spelt in its settings model (maskkit.evaluations imports
    no torch): they must be the library's."""
    import inspect

    from maskkit.eval.zeroshot import DEFAULT_PROMPT_STYLE, zeroshot_eval
    from maskkit.evaluations import ZeroshotSettings

    s = ZeroshotSettings()
    lib = inspect.signature(zeroshot_eval).parameters
    assert s.prompts == DEFAULT_PROMPT_STYLE == lib["style"].default
    assert s.no_finding == lib["no_finding"].default and s.bootstrap == lib["n_boot"].default
    assert s.batch_size == lib["batch_size"].default


def test_splits_are_deterministic_patient_level_and_nested(tmp_path):
    ids = [f"img{i}" for i in range(400)]
    pats = [f"p{i // 3}" for i in range(400)]
    a, b = make_splits(ids, pats, seed=5), make_splits(ids, pats, seed=5)
    assert a == b and make_splits(ids, pats, seed=6)["test"]["ids"] != a["test"]["ids"]
    pat = dict(zip(ids, pats))
    test_p = {pat[i] for i in a["test"]["ids"]}
    for name in ("train_0.01", "train_0.1", "train_1"):
        assert not {pat[i] for i in a[name]["ids"]} & test_p
    assert set(a["train_0.01"]["ids"]) <= set(a["train_0.1"]["ids"]) <= set(a["train_1"]["ids"])
    assert a["train_0.01"]["sha256"] == checksum(a["train_0.01"]["ids"])
    write_splits(a, tmp_path)
    assert read_splits(tmp_path) == a
    s = json.loads((tmp_path / "test.json").read_text())
    s["ids"] = s["ids"][1:]
    (tmp_path / "test.json").write_text(json.dumps(s))
    with pytest.raises(Exception, match="do not match their sha256"):
        read_splits(tmp_path)


def test_split_files_keyed_by_source_and_id(tmp_path):
    """Keys (source, id) are written as [source, id] pairs and read back as tuples, checksum
    included; a file of plain ids (written before) is read for a corpus of one source as that
    source's keys."""
    keys = [("csv#0", f"x{i}.png") for i in range(20)] + [("csv#1", f"x{i}.png") for i in range(20)]
    pats = [(k[0], f"p{i % 20}") for i, k in enumerate(keys)]
    a = make_splits(keys, pats, seed=1)
    write_splits(a, tmp_path / "k")
    assert json.loads((tmp_path / "k" / "test.json").read_text())["ids"][0][0] in ("csv#0", "csv#1")
    assert read_splits(tmp_path / "k") == a and a["test"]["sha256"] == checksum(a["test"]["ids"])
    assert len(a["train_0.01"]["ids"]) == 1  # 1% of 32 patients is one patient, one image: the sources' p0..p19 are not merged
    plain = make_splits([f"x{i}.png" for i in range(20)], [f"p{i}" for i in range(20)], seed=1)
    write_splits(plain, tmp_path / "p")
    got = read_splits(tmp_path / "p", source="csv")
    assert got["test"]["ids"] == [("csv", i) for i in plain["test"]["ids"]]


def _features(M=40, N=16, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    lesion = torch.zeros(M, N, dtype=torch.bool)
    lesion[:, :4] = True  # 4 of 16 tokens: base rate 0.25
    img = torch.randn(M, N, D, generator=g) * 0.1
    img[lesion] += torch.tensor([3.0] + [0.0] * (D - 1))  # lesion tokens point along e1
    rep = torch.zeros(M, 3, D)
    rep[:, :, 0] = 1.0  # the report "mentions" e1
    return Features(img, rep, torch.ones(M, 3, dtype=torch.bool), torch.randn(14, D, generator=g), None, lesion)


def test_measure_random_and_perfect_guidance():
    f = _features()
    r = measure(build_strategy({"random": {"ratio": 0.5}}), f, seed=0)
    assert r["lesion_visible"] == pytest.approx(0.5, abs=0.08) and r["lift"] == pytest.approx(1.0, abs=0.15)
    guided = measure(build_strategy({"report_cross": {"ratio": 0.25, "reduction": "max_sim"}}), f)
    assert guided["lesion_visible"] == 0.0 and guided["masked_on_lesion"] == 1.0 and guided["lift"] == pytest.approx(4.0)
    u = measure(build_strategy({"union": {"of": ["report_cross", "image_self"], "child_ratio": 0.5, "ratio": 0.5}}), f)
    assert 0.5 <= u["union_coverage"] <= 1.0


@pytest.mark.slow
def test_sweep_resumes_without_redoing_finished_runs(tmp_path):
    from maskkit.sweep import SweepSpec, run_sweep

    small = ["data.n=16", "data.val_n=16", "train.steps=2", "train.batch_size=4", "train.warmup_steps=1",
             "runtime.progress=false", "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1",
             "model.mim.decoder_heads=2"]
    spec = SweepSpec(["t3_attmim"], {"image_mask.child_ratio": [0.5, 0.7]}, [0], small + ["train.ckpt_every=1"], "test")
    rows = run_sweep(spec, tmp_path)
    assert len(rows) == 2 and all(r["auc"] is not None for r in rows)
    runs = sorted((tmp_path / "runs").iterdir())
    # a sweep run keeps only its latest checkpoint (step 1's was written, then removed)
    assert [sorted(f.name for f in (p / "checkpoints").iterdir()) for p in runs] == [["step_00000002.pt"]] * 2
    stamps = {p: (p / "checkpoints" / "step_00000002.pt").stat().st_mtime_ns for p in runs}
    # interrupt one run: drop its done marker and its final checkpoint, keep an earlier one
    victim = runs[0]
    (victim / "done.json").unlink()
    rows2 = run_sweep(spec, tmp_path)
    assert (runs[1] / "checkpoints" / "step_00000002.pt").stat().st_mtime_ns == stamps[runs[1]]  # not redone
    assert (victim / "done.json").is_file() and len(rows2) == 2
    # --rescore: a run done before is scored again (same model and data), not retrained
    before = json.loads((runs[1] / "zeroshot.json").read_text())
    (runs[1] / "zeroshot.json").unlink()
    rows3 = run_sweep(spec, tmp_path, rescore=True)
    assert (runs[1] / "checkpoints" / "step_00000002.pt").stat().st_mtime_ns == stamps[runs[1]]
    after = json.loads((runs[1] / "zeroshot.json").read_text())
    assert after["mean"] == before["mean"] and after["prompts"] == "sentence"
    assert {r["run"]: r["auc"] for r in rows3} == {r["run"]: r["auc"] for r in rows2}
    # a sweep's run directory has "key=value" in its name: the eval commands take it as a path
    zs = subprocess.run([sys.executable, "-m", "maskkit.cli", "eval", "zeroshot", str(victim), "--bootstrap", "0"],
                        capture_output=True, text=True)
    assert "=" in victim.name and zs.returncode == 0, zs.stderr
    text = (tmp_path / "results.md").read_text()
    assert "Zero-shot protocol: prompts: sentence; No Finding: absence" in text
    assert "±" not in text.split("Zero-shot AUC per label")[0]  # one seed: no spread to show, not "± 0.00"
    assert "| 1 | " in (tmp_path / "paired.md").read_text() and "n/a (one seed: no spread)" in (tmp_path / "paired.md").read_text()
    from maskkit.viz import sweep_figure

    assert sweep_figure(tmp_path).axes  # its x axis is the grid key read from results.csv, not a metric column
    assert "| t3_attmim | 0.5 | 1 |" in text and (tmp_path / "results.png").stat().st_size > 1000
    assert (tmp_path / "results.csv").read_text().splitlines()[0].startswith("preset,image_mask.child_ratio,seeds,auc_mean")


@pytest.mark.slow
def test_budget_matched_parallel_sweep_with_probe_and_paired_comparison(tmp_path):
    """align_steps gives every row the same alignment steps (warm-up on top); two runs at once in
    subprocesses; each row also has its linear probe at 1/10/100%; paired.md compares seed by seed."""
    from maskkit.sweep import SweepSpec, run_sweep

    small = ["data.n=16", "data.val_n=16", "train.batch_size=4", "train.warmup_steps=1", "runtime.progress=false",
             "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1", "model.mim.decoder_heads=2"]
    spec = SweepSpec(["clip", "t3_mim_random"], {}, [0, 1], small, "budget", align_steps=2, probe=True)
    rows = run_sweep(spec, tmp_path, jobs=2)
    steps = {(r["preset"], r["seed"]): r["steps"] for r in rows}
    assert steps == {("clip", 0): 2, ("clip", 1): 2, ("t3_mim_random", 0): 3, ("t3_mim_random", 1): 3}
    assert all({"probe_1", "probe_10", "probe_100"} <= set(r) for r in rows)
    assert any(k.startswith("auc:") for k in rows[0])
    paired = (tmp_path / "paired.md").read_text()
    assert "| t3_mim_random | clip | auc | 2 |" in paired and "probe_100" in paired


def test_sweep_runs_keep_one_checkpoint_unless_told_otherwise(tmp_path):
    from maskkit.config import resolve
    from maskkit.sweep import SweepSpec, run_args

    def keep(spec_args=(), extra=()):
        cfg, _ = resolve(run_args(SweepSpec(["clip"], args=list(spec_args)), "clip", {}, 0, tmp_path, extra))
        return cfg.train.keep_last

    assert keep() == 1
    assert keep(spec_args=["train.keep_last=2"]) == 2 and keep(extra=["train.keep_last=3"]) == 3
    assert resolve(["preset=clip"])[0].train.keep_last == 3  # maskkit run itself is unchanged


def test_positional_arguments_split_into_paths_and_settings(tmp_path, monkeypatch):
    from maskkit.cli import _split_targets
    from maskkit.errors import MaskkitError

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "xlip-entity.ratio=0.2-seed0"
    run.mkdir()
    items = [run.name, "runs/clip-seed0", "runs/xlip-image_mask.ratio=0.9-seed1", "data.root=/x", "text_mask.of.0.entity.ratio=0.3"]
    assert _split_targets(items, "eval zeroshot") == (items[:3], items[3:])
    with pytest.raises(MaskkitError, match="eval zeroshot: give a run directory or checkpoint file first"):
        _split_targets(["data.root=/x"], "eval zeroshot")
    assert _split_targets(["train.steps=4"], "sweep", required=False) == ([], ["train.steps=4"])


def test_a_sweep_checks_every_run_before_starting_one(tmp_path):
    from maskkit.errors import MaskkitError
    from maskkit.sweep import SweepSpec, run_sweep

    spec = SweepSpec(["t3_mim_random", "clip"], {"image_mask.ratio": [0.5]}, [0], ["runtime.progress=false"], "bad")
    with pytest.raises(MaskkitError, match="image_mask"):  # clip has no image mask to set a ratio on
        run_sweep(spec, tmp_path / "sw")
    assert not (tmp_path / "sw").exists()  # nothing trained, nothing written


def test_evaluation_takes_only_data_settings():
    from maskkit.cli import _data_settings
    from maskkit.errors import MaskkitError

    assert _data_settings(["data.val_n=16", "data.root=/x"], "eval zeroshot") == ["data.val_n=16", "data.root=/x"]
    for bad in ("lr=0.2", "train.steps=3", "bogus.key=1"):
        with pytest.raises(MaskkitError, match=f"'{bad}' is not an existing run directory or checkpoint, nor a data"):
            _data_settings(["data.val_n=16", bad], "eval zeroshot")
