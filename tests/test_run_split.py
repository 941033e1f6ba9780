"""Evaluation on the run's own split.

A run records its held-out ids per source with their SHA-256 (split.json); every command that
evaluates or draws samples from a run takes data and split from the run by default and checks
the ids it rebuilds. The reproduction: a ``train.seed=1`` run on a real-format CSV; before, every
evaluation used seed 0's split, whose held-out patients include training patients of seed 1.
"""

from __future__ import annotations

import hashlib
import html
import json
import re

import pytest
from typer.testing import CliRunner

from conftest import shared_path
from maskkit.cli import app
from maskkit.config import resolve
from maskkit.data.build import SplitMismatchError, split_by_patient
from maskkit.data.records import load_table
from maskkit.train import train

TINY = ["train.batch_size=4", "train.log_every=1", "train.warmup_steps=1", "runtime.progress=false",
        "runtime.evaluations=[]", "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1",
        "model.mim.decoder_heads=2"]
NIH_LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Nodule"]


def sha(ids) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


@pytest.fixture(scope="module")
def nih_run(tmp_path_factory):
    """A 2-step xlip run with train.seed=1 on the real NIH dev.csv (reports written from its labels)."""
    csv = shared_path("nih1000", "dev.csv")
    tmp = tmp_path_factory.mktemp("split")
    opts = json.dumps({"image_root": str(csv.parent.parent), "label_cols": NIH_LABELS, "captions_from_labels": True})
    data = ["data=csv", f"data.path={csv}", f"data.options={opts}"]
    cfg, src = resolve([*TINY, *data, "train.seed=1", "train.steps=2", f"runtime.out_dir={tmp}", "runtime.name=r"])
    train(cfg, src)
    table = load_table("csv", path=str(csv), **json.loads(opts))
    trained = {r.patient_id for r in split_by_patient(table.records, 0.1, 1)[0]}
    # what the run trained on, independently of split.json: the patients of its training dataset
    expected = sorted(r.id for r in table.records if r.patient_id not in trained)
    return tmp / "r", table, trained, expected, data


def invoke(*args):
    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    if res.exit_code != 0:
        raise AssertionError(f"{args}: exit {res.exit_code}: {res.output[-2000:]} {res.exception!r}")
    return res


def test_the_reproduction_seed_0_split_overlaps_seed_1_training(nih_run):
    """The leak the issue reports, on this data: seed 0's held-out patients include training patients of seed 1."""
    _, table, trained, expected, _ = nih_run
    seed0 = {r.patient_id for r in split_by_patient(table.records, 0.1, 0)[1]}
    assert seed0 & trained and expected


def test_split_json_records_the_held_out_ids(nih_run):
    run, table, trained, expected, _ = nih_run
    rec = json.loads((run / "split.json").read_text())
    (s,) = rec["sources"]
    assert rec["seed"] == 1 and s["held_out_ids"] == expected and s["held_out_sha256"] == sha(expected)
    assert s["records"] == len(table) and s["train"] + s["held_out"] == len(table) and s["held_out"] == len(expected)
    assert not {r.patient_id for r in table.records if r.id in set(s["held_out_ids"])} & trained


def test_eval_zeroshot_uses_the_runs_split(nih_run, tmp_path):
    run, _, _, expected, _ = nih_run
    out = tmp_path / "zs.json"
    res = invoke("eval", "zeroshot", run, "--bootstrap", "0", "--out", out)
    got = json.loads(out.read_text())
    assert got["n"] == len(expected) and got["data"]["split"] == "run"
    assert got["data"]["sources"][0]["held_out_sha256"] == sha(expected)
    text = " ".join(res.output.split())  # the table wraps at the runner's 80 columns
    assert "the run's held-out split" in text and "data: the held-out split of run" in text


def test_eval_zeroshot_with_explicit_data_keeps_the_runs_seed_and_names_it(nih_run, tmp_path):
    run, _, _, expected, data = nih_run
    out = tmp_path / "zs.json"
    invoke("eval", "zeroshot", run, *data, "--bootstrap", "0", "--out", out)
    got = json.loads(out.read_text())
    assert got["data"]["split"] == "explicit" and "seed 1" in got["data"]["text"]
    assert got["data"]["sources"][0]["held_out_sha256"] == sha(expected)


def test_eval_finetune_tests_on_the_runs_held_out_patients(nih_run, tmp_path):
    run, table, trained, expected, _ = nih_run
    invoke("eval", "finetune", run, "--epochs", "1", "--out", tmp_path / "ft")
    test = json.loads((tmp_path / "ft" / "splits" / "test.json").read_text())
    assert test["ids"] == [["csv", i] for i in expected]  # keyed by (source, id)
    pat = {r.id: r.patient_id for r in table.records}
    train100 = json.loads((tmp_path / "ft" / "splits" / "train_1.json").read_text())["ids"]
    assert {s for s, _ in train100} == {"csv"} and {pat[i] for _, i in train100} <= trained  # pretraining's training patients only
    assert json.loads((tmp_path / "ft" / "results.json").read_text())[0]["data"]["split"] == "run"


@pytest.mark.parametrize("what", ["masks", "text"])
def test_visualize_draws_held_out_samples(nih_run, tmp_path, what):
    run, _, _, expected, _ = nih_run
    res = invoke("visualize", what, run, "--n", "3", "--out", tmp_path)
    page = html.unescape((tmp_path / f"{what}.html").read_text())
    shown = set(re.findall(r"nih1000/dev/\d+_\d+\.png", page))
    assert shown and shown <= set(expected)
    # the data line, as the eval commands print it (one helper: maskkit.data.build.data_line)
    text = " ".join(res.output.split())
    assert f"data: the held-out split of run {run} (csv path=" in text and "split.json verified)" in text


def test_every_command_reading_a_run_says_which_data_in_the_same_line(nih_run, tmp_path):
    """eval zeroshot, eval finetune, visualize masks (also --step), visualize text, sweep --rescore:
    one `data:` line each, written by one helper."""
    from rich.console import Console

    from maskkit.data.build import data_line
    from maskkit.sweep import rescore_run

    run = nih_run[0]
    verified = f"data: the held-out split of run {run} (csv path="
    outs = {"zeroshot": invoke("eval", "zeroshot", run, "--bootstrap", "0").output,
            "finetune": invoke("eval", "finetune", run, "--epochs", "1", "--out", tmp_path / "ft").output,
            "masks": invoke("visualize", "masks", run, "--n", "2", "--out", tmp_path / "m").output,
            "text": invoke("visualize", "text", run, "--n", "2", "--out", tmp_path / "t").output,
            "step": invoke("visualize", "masks", run, "--step", "1", "--n", "2", "--out", tmp_path / "s").output}
    lines = {k: [l for l in " ".join(v.split()).replace(" data: ", "\ndata: ").splitlines() if l.startswith("data: ")]
             for k, v in outs.items()}
    assert all(len(v) == 1 for v in lines.values()), lines
    for k in ("zeroshot", "finetune", "masks", "text"):
        assert lines[k][0].startswith(verified) and lines[k][0].endswith("split.json verified)"), lines[k]
    assert lines["step"][0].startswith(f"data: the training batch of step 1 (micro-batch 0) of run {run} (csv path=")
    log = tmp_path / "rescore.txt"
    with open(log, "w") as f:
        rescore_run(run, {}, console=Console(file=f, width=1000))
    assert [l for l in log.read_text().splitlines() if l.startswith("data: ")] == [lines["zeroshot"][0]]
    assert data_line({"text": "x"}) == data_line("x") == "data: x"


def test_sweep_rescore_and_probe_use_the_runs_split(nih_run):
    from maskkit.sweep import probe_aucs, rescore_run
    from maskkit.training.checkpointing import load_model

    run, _, _, expected, _ = nih_run
    rescore_run(run, {})
    got = json.loads((run / "zeroshot.json").read_text())
    assert got["n"] == len(expected) and got["data"]["sources"][0]["held_out_sha256"] == sha(expected)
    assert set(probe_aucs(run, load_model(run)[1])) == {"probe_1", "probe_10", "probe_100"}


def test_changed_data_is_one_line(tmp_path):
    """The CSV changed after the run (a held-out patient's rows removed): every command refuses."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    rows = ["image_path,report,patient_id,Cardiomegaly"]
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / f"i{i}.png")
        rows.append(f"i{i}.png,Heart size is normal case {i}.,p{i // 2},{i % 2}")
    csv = tmp_path / "d.csv"
    csv.write_text("\n".join(rows) + "\n")
    cfg, src = resolve([*TINY, "data=csv", f"data.path={csv}", "train.seed=1", "train.steps=1",
                        f"runtime.out_dir={tmp_path}", "runtime.name=r"])
    train(cfg, src)
    held = json.loads((tmp_path / "r" / "split.json").read_text())["sources"][0]["held_out_ids"]
    csv.write_text("\n".join(r for r in rows if not r.startswith(held[0] + ",")) + "\n")
    res = CliRunner().invoke(app, ["eval", "zeroshot", str(tmp_path / "r"), "--bootstrap", "0"])
    assert isinstance(res.exception, SplitMismatchError)
    assert "differ from the run's" in str(res.exception) and "\n" not in str(res.exception)
    from maskkit.sweep import rescore_run

    with pytest.raises(SplitMismatchError):
        rescore_run(tmp_path / "r", {})


def test_eval_masks_names_phantoms_none_trained_on(nih_run, tmp_path):
    """Mask-lesion overlap needs lesion masks: phantoms from generator index 20,000,000, apart from
    every training and held-out phantom; the result names them."""
    run = nih_run[0]
    invoke("eval", "masks", run, "--n", "4", "--seeds", "1", "--out", tmp_path)
    rows = json.loads((tmp_path / "masks.json").read_text())["rows"]  # the contract's document; its rows as before
    assert rows and all("from generator index 20000000" in r["data"] and "trained on no phantoms" in r["data"] for r in rows)


def test_eval_addresses_the_runs_source_by_its_index(nih_run, tmp_path):
    """The run's data moved: `data.sources.0.path=` names the run's (single) source by index, the
    rest of its settings kept; the held-out set is the run's. An index the run has not is one line."""
    import shutil

    from maskkit.errors import MaskkitError

    run, _, _, expected, _ = nih_run
    moved = tmp_path / "moved.csv"
    shutil.copy(shared_path("nih1000", "dev.csv"), moved)
    out = tmp_path / "zs.json"
    invoke("eval", "zeroshot", run, f"data.sources.0.path={moved}", "--bootstrap", "0", "--out", out)
    got = json.loads(out.read_text())
    assert got["data"]["split"] == "explicit" and f"path={moved}" in got["data"]["text"]
    assert got["data"]["sources"][0]["held_out_sha256"] == sha(expected)
    res = CliRunner().invoke(app, ["eval", "zeroshot", str(run), "data.sources.1.path=x.csv"])
    assert isinstance(res.exception, MaskkitError)
    assert str(res.exception) == "data.sources.1.path: '1' is not an index of data.sources, which has 1 entry here (from cli)"


def test_visualize_a_step_the_run_did_not_train_is_one_line(nih_run, tmp_path):
    from maskkit.errors import MaskkitError

    run = nih_run[0]
    res = CliRunner().invoke(app, ["visualize", "masks", str(run), "--step", "3", "--out", str(tmp_path)])
    assert isinstance(res.exception, MaskkitError) and list(tmp_path.iterdir()) == []
    assert str(res.exception) == (f"visualize masks --step 3: run {run} trained steps 1 to 2 (its metrics.jsonl and "
                                  "checkpoints); give --step between 1 and 2")
    invoke("visualize", "masks", run, "--step", "2", "--n", "1", "--out", tmp_path)  # the last one it trained
