"""A resume that is refused writes nothing, and names what refused it: the config is compared
first (naming the changed keys), then the number of processes, then the held-out split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskkit.config import resolve
from maskkit.data.build import SplitMismatchError
from maskkit.train import TrainingError, train

SMALL = ["train.batch_size=4", "train.log_every=1", "train.ckpt_every=10", "train.warmup_steps=1", "runtime.progress=false",
         "runtime.evaluations=[]", "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1",
         "model.mim.decoder_heads=2", "runtime.name=r"]


def snapshot(run: Path) -> dict[str, str]:
    """Every file of a run directory (checkpoints too) and a digest of its bytes."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A finished 2-step run on a CSV whose split depends on train.seed; returns (tmp, csv, args)."""
    tmp = tmp_path_factory.mktemp("resume")
    rows = ["image_path,report,patient_id,Cardiomegaly"]
    for i in range(40):
        Image.fromarray(np.full((32, 32), i * 5, np.uint8)).save(tmp / f"i{i}.png")
        rows.append(f"i{i}.png,Heart size normal case {i}.,p{i},{i % 2}")
    csv = tmp / "d.csv"
    csv.write_text("\n".join(rows) + "\n")
    args = [*SMALL, "data=csv", f"data.path={csv}", f"runtime.out_dir={tmp}"]
    train(*resolve([*args, "train.steps=2"]))
    return tmp, csv, args


def _refused(run: Path, exc_type, args):
    before = snapshot(run)
    with pytest.raises(exc_type) as e:
        train(*resolve([*args, "train.steps=4", "runtime.resume=latest"]))
    assert "\n" not in str(e.value)
    assert snapshot(run) == before  # config.json, environment.json, split.json, checkpoints: untouched
    return str(e.value)


def test_a_changed_seed_is_named_as_the_config_not_as_changed_data(csv_run):
    tmp, _, args = csv_run
    ck = tmp / "r" / "checkpoints" / "step_00000002.pt"
    msg = _refused(tmp / "r", TrainingError, [*args, "train.seed=1"])
    assert msg == (f"runtime.resume: {ck} was written by another config; differing keys: train.seed (0 in the checkpoint, "
                   "1 now); resume with the run's settings, or start a new run")
    msg = _refused(tmp / "r", TrainingError, [*args, "train.lr=0.01", "image_mask.child_ratio=0.5"])
    assert "differing keys: image_mask, train.lr (0.0005 in the checkpoint, 0.01 now);" in msg


def test_another_world_size_is_refused_before_anything_is_written(csv_run, tmp_path):
    tmp, _, args = csv_run
    import shutil

    run = tmp_path / "r"
    shutil.copytree(tmp / "r", run)
    ck = run / "checkpoints" / "step_00000002.pt"
    state = torch.load(ck, weights_only=True)
    state["world"] = 2
    torch.save(state, ck)
    args = [a for a in args if not a.startswith("runtime.out_dir=")] + [f"runtime.out_dir={tmp_path}"]
    msg = _refused(run, TrainingError, args)
    assert msg.startswith(f"runtime.resume: {ck} was written by 2 processes, this run has 1")


def test_changed_data_is_refused_before_anything_is_written(csv_run):
    tmp, csv, args = csv_run
    text = csv.read_text()
    held = json.loads((tmp / "r" / "split.json").read_text())["sources"][0]["held_out_ids"]
    csv.write_text("".join(l for l in text.splitlines(True) if not l.startswith(held[0] + ",")))  # changed in place
    try:
        msg = _refused(tmp / "r", SplitMismatchError, args)
    finally:
        csv.write_text(text)
    assert "the data changed since the run" in msg


def test_changed_training_rows_are_refused_before_anything_is_written(csv_run):
    tmp, csv, args = csv_run
    text = csv.read_text()
    rec = json.loads((tmp / "r" / "split.json").read_text())["sources"][0]
    held = set(rec["held_out_ids"])
    lines = text.splitlines(True)
    gone = [l for l in lines[1:] if l.split(",")[0] not in held][:10]  # 10 training rows removed, the held-out ones kept
    csv.write_text("".join(l for l in lines if l not in gone))
    try:
        msg = _refused(tmp / "r", SplitMismatchError, args)
    finally:
        csv.write_text(text)
    n = rec["train"]
    assert msg.startswith(f"{tmp / 'r' / 'split.json'}: source csv: the training ids rebuilt now ({n - 10}) differ from the "
                          f"run's ({n}, sha256 {rec['train_sha256'][:12]}); the data changed since the run, and the saved "
                          "loader position would index another order")


def test_train_steps_below_the_checkpoints_step_is_refused_before_anything_is_written(csv_run):
    tmp, _, args = csv_run
    ck = tmp / "r" / "checkpoints" / "step_00000002.pt"
    before = snapshot(tmp / "r")
    with pytest.raises(TrainingError) as e:
        train(*resolve([*args, "train.steps=1", "runtime.resume=latest"]))
    assert str(e.value) == (f"train.steps: 1 is below the step of {ck} (2); a resume trains on up to train.steps, so give "
                            "train.steps=2 (the run's) or more, or start a new run")
    assert snapshot(tmp / "r") == before  # config.json still says 2 steps
    assert json.loads((tmp / "r" / "config.json").read_text())["config"]["train"]["steps"] == 2


def test_a_changed_source_is_named_by_entry_and_key(csv_run, tmp_path):
    from maskkit.training.checkpointing import entry_differences

    _, csv, args = csv_run
    args = [a for a in args if not a.startswith(("runtime.out_dir=", "data=", "data.path="))] + [f"runtime.out_dir={tmp_path}"]
    entries = [{"name": "csv", "path": str(csv)}, {"name": "csv", "path": str(csv), "weight": 1.0}]
    train(*resolve([*args, f"data.sources={json.dumps(entries)}", "train.steps=1"]))
    entries[1]["weight"], entries[0]["role"] = 0.5, "paired"
    msg = _refused(tmp_path / "r", TrainingError, [*args, f"data.sources={json.dumps(entries)}"])
    assert ("differing keys: data.sources[0].role ((unset) in the checkpoint, \"paired\" now), data.sources[1].weight (1.0 in "
            "the checkpoint, 0.5 now); resume") in msg
    assert entry_differences("data.sources", [{}], [{}, {}]) == [("data.sources", "1 entries", "2 entries")]
    assert entry_differences("train.lr", 0.1, 0.2) == [("train.lr", 0.1, 0.2)]


def _ck_run_id(ck: Path) -> str | None:
    return torch.load(ck, weights_only=True).get("run_id")


def _dir_run_id(run: Path) -> str:
    return json.loads((run / "config.json").read_text())["run_id"]


def test_a_checkpoint_copied_from_another_run_is_refused_by_auto_and_continued_when_named(csv_run, tmp_path, capsys):
    """The fault: another run's checkpoint (same config) copied into checkpoints/ was resumed by
    runtime.resume=auto, and metrics.jsonl read steps [1, 2, 7]. Now it is refused, naming both ids;
    named explicitly (runtime.resume=<file>) it is continued with a note, the directory keeping its id."""
    import shutil

    tmp, _, args = csv_run
    args = [a for a in args if not a.startswith("runtime.out_dir=")] + [f"runtime.out_dir={tmp_path}"]
    train(*resolve([*args, "train.steps=1"]))  # this directory's own run: step 1 only
    run, theirs = tmp_path / "r", tmp / "r" / "checkpoints" / "step_00000002.pt"
    mine, other = _dir_run_id(run), _dir_run_id(tmp / "r")
    assert len(mine) == 16 and mine != other
    assert _ck_run_id(run / "checkpoints" / "step_00000001.pt") == mine and _ck_run_id(theirs) == other
    ck = run / "checkpoints" / "step_00000002.pt"
    shutil.copy(theirs, ck)
    before = snapshot(run)
    with pytest.raises(TrainingError) as e:
        train(*resolve([*args, "train.steps=4", "runtime.resume=auto"]))
    assert str(e.value) == (f"runtime.resume=auto: {ck} belongs to another run (run id {other}; {run} is run {mine}, its "
                            f"config.json); move it out of {run / 'checkpoints'}, or continue from it on purpose in a new "
                            f"run directory (runtime.name=<new> runtime.resume={ck})")
    assert snapshot(run) == before
    capsys.readouterr()
    train(*resolve([*args, "train.steps=3", f"runtime.resume={theirs}"]))
    err = capsys.readouterr().err
    assert (f"runtime.resume: {theirs} is a checkpoint of another run (run id {other}); {run} (run {mine}) continues "
            "from it and keeps its id") in " ".join(err.split())
    assert _dir_run_id(run) == mine and _ck_run_id(run / "checkpoints" / "step_00000003.pt") == mine


def test_another_runs_checkpoint_is_named_as_such_not_as_a_changed_config(csv_run, tmp_path):
    """A foreign checkpoint with another train.seed: the refusal names the two runs, not train.seed
    (the advice "resume with the run's settings" would give the foreign file's seed)."""
    import shutil

    tmp, _, args = csv_run
    run = tmp_path / "r"
    shutil.copytree(tmp / "r", run)
    rec = json.loads((run / "config.json").read_text())
    rec["run_id"] = "0123456789abcdef"  # the directory of another run (its own checkpoints aside)
    (run / "config.json").write_text(json.dumps(rec))
    args = [a for a in args if not a.startswith("runtime.out_dir=")] + [f"runtime.out_dir={tmp_path}", "train.seed=1"]
    msg = _refused(run, TrainingError, args)
    ck = run / "checkpoints" / "step_00000002.pt"
    assert msg.startswith(f"runtime.resume=latest: {ck} belongs to another run (run id {_ck_run_id(ck)}; {run} is run "
                          "0123456789abcdef, its config.json)")
    assert "train.seed" not in msg


def test_a_copied_run_directory_keeps_its_id_and_an_older_checkpoint_without_one_resumes(csv_run, tmp_path):
    """A run directory copied elsewhere is the same run (its id travels in config.json); a checkpoint
    written before checkpoints recorded the run id resumes as before."""
    import shutil

    tmp, _, args = csv_run
    args = [a for a in args if not a.startswith("runtime.out_dir=")] + [f"runtime.out_dir={tmp_path}"]
    rid = _dir_run_id(tmp / "r")
    run = tmp_path / "r"
    shutil.copytree(tmp / "r", run)
    train(*resolve([*args, "train.steps=3", "runtime.resume=latest"]))
    assert _dir_run_id(run) == rid and _ck_run_id(run / "checkpoints" / "step_00000003.pt") == rid
    ck = run / "checkpoints" / "step_00000003.pt"
    state = torch.load(ck, weights_only=True)
    del state["run_id"]  # as an older maskkit wrote it
    torch.save(state, ck)
    rec = json.loads((run / "config.json").read_text())
    rec["run_id"] = "0123456789abcdef"  # ... and not compared with the directory's id
    (run / "config.json").write_text(json.dumps(rec))
    train(*resolve([*args, "train.steps=4", "runtime.resume=auto"]))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert _dir_run_id(run) == "0123456789abcdef"
