"""maskkit run: resume equivalence, run directories, bad input, 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from maskkit.config import resolve
from maskkit.train import TrainingError, train

SMALL = ["data.n=24", "data.val_n=0", "train.batch_size=4", "train.log_every=1", "train.ckpt_every=10",
         "train.warmup_steps=5", "runtime.progress=false", "runtime.eval_zeroshot=false",
         "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1", "model.mim.decoder_heads=2"]


def cfg_for(tmp_path, *extra):
    return resolve(SMALL + [f"runtime.out_dir={tmp_path}"] + list(extra))


def losses(result, steps):
    return torch.tensor([[r.get(k, 0.0) for k in ("align_loss", "mim_loss", "mlm_loss")] for r in result.losses if r["step"] in steps])


def test_resume_gives_the_same_losses(tmp_path):
    full = train(*cfg_for(tmp_path, "train.steps=20", "runtime.name=full"))
    part = train(*cfg_for(tmp_path, "train.steps=10", "runtime.name=part"))
    assert part.step == 10 and (tmp_path / "part" / "checkpoints" / "step_00000010.pt").is_file()
    resumed = train(*cfg_for(tmp_path, "train.steps=20", "runtime.name=part", "runtime.resume=latest"))
    assert [r["step"] for r in resumed.losses] == list(range(11, 21))
    torch.testing.assert_close(losses(resumed, range(11, 21)), losses(full, range(11, 21)))
    # the warm-up boundary (step 5) was crossed before the stop; steps 11-20 train all terms
    assert all("align_loss" in r for r in resumed.losses)
    lines = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, 21)) and lines[0]["warmup"] is True
    run = tmp_path / "full"
    assert {p.name for p in run.iterdir()} >= {"config.json", "environment.json", "metrics.jsonl", "checkpoints"}
    env = json.loads((run / "environment.json").read_text())
    assert env["maskkit_revision"] and env["torch"] == torch.__version__
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000010.pt", "step_00000020.pt"]


def test_checkpoints_keep_last_k_and_are_atomic(tmp_path):
    train(*cfg_for(tmp_path, "train.steps=6", "train.ckpt_every=1", "train.keep_last=2", "runtime.name=k"))
    names = sorted(p.name for p in (tmp_path / "k" / "checkpoints").iterdir())
    assert names == ["step_00000005.pt", "step_00000006.pt"]  # no temporary files left


def test_resume_refuses_another_config(tmp_path):
    train(*cfg_for(tmp_path, "train.steps=2", "runtime.name=a"))
    with pytest.raises(TrainingError, match=r"written by another config; differing keys: image_mask, train.lr"):
        train(*cfg_for(tmp_path, "train.steps=4", "runtime.name=a", "runtime.resume=latest", "train.lr=0.01",
                       "image_mask.child_ratio=0.5"))


def test_existing_run_dir_is_not_overwritten(tmp_path):
    train(*cfg_for(tmp_path, "train.steps=1", "runtime.name=b"))
    before = (tmp_path / "b" / "metrics.jsonl").read_bytes()
    with pytest.raises(TrainingError, match="run directory exists; pass runtime.resume=latest"):
        train(*cfg_for(tmp_path, "train.steps=1", "runtime.name=b"))
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes() == before
    train(*cfg_for(tmp_path, "train.steps=1", "runtime.name=b", "runtime.overwrite=true"))


def test_elastic_restart_resumes_from_latest(tmp_path, monkeypatch):
    train(*cfg_for(tmp_path, "train.steps=10", "runtime.name=e"))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    r = train(*cfg_for(tmp_path, "train.steps=12", "runtime.name=e"))
    assert [x["step"] for x in r.losses] == [11, 12]


def test_nan_losses_skip_then_stop(tmp_path):
    cfg, src = cfg_for(tmp_path, "train.steps=5", "runtime.name=n", "train.max_bad_steps=3", "train.lr=1e30",
                       "train.optimizer=sgd", "train.clip_grad=null", "train.warmup_steps=0")
    with pytest.raises(TrainingError, match=r"train.max_bad_steps: 3 non-finite losses in a row, last at step \d+ \(.*_loss="):
        train(cfg, src)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "maskkit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.parametrize("args,message", [
    (["run", "train.lrr=1"], "unknown key 'train.lrr'; did you mean 'train.lr'"),
    (["run", "train.lr=fast"], "train.lr: Input should be a valid number"),
    (["run", "preset=xlpi"], "unknown preset 'xlpi'"),
    (["run", "image_mask.of.0=report_crss"], "unknown strategy 'report_crss'"),
    (["run", "image_mask.ratio=1.5"], "image_mask.union.ratio: Input should be less than or equal to 1"),
    (["run", "data=nih", "data.root=/nonexistent/nih", "runtime.out_dir={tmp}"], "data.root: folder /nonexistent/nih does not exist"),
])
def test_bad_input_exits_with_one_line(tmp_path, args, message):
    out = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip()
    assert "Traceback" not in err and message in err and err.count("\n") == 0, err


def test_corrupt_checkpoint_and_debug(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    args = ["run", *SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=c", f"runtime.resume={tmp_path / 'bad.pt'}"]
    out = cli(*args)
    assert out.returncode == 2 and "is not a readable maskkit checkpoint" in out.stderr and "Traceback" not in out.stderr
    out = cli("--debug", *args)
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_config_show_names_sources():
    out = cli("config", "show", "--json", "preset=xlip", "train.lr=0.001")
    data = json.loads(out.stdout)
    assert data["config"]["train"]["lr"] == 0.001 and data["sources"]["train.lr"] == "cli"
    assert data["sources"]["model.arch"] == "scale:tiny"


def test_two_process_ddp_equals_one_process(tmp_path):
    """One step on 2 ranks x batch 4 (gloo, CPU) gives the losses of 1 process x batch 8."""
    common = ["data.n=16", "data.val_n=0", "train.steps=1", "train.warmup_steps=0", "train.log_every=1",
              "runtime.progress=false", "runtime.eval_zeroshot=false", f"runtime.out_dir={tmp_path}",
              "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1", "model.mim.decoder_heads=2",
              # deterministic masks, so that both layouts mask the same tokens
              'image_mask={"image_self": {"ratio": 0.75}}', 'image_only_mask={"image_self": {"ratio": 0.75}}',
              'text_mask={"intersect": {"of": [{"random": {"modality": "text", "ratio": 1.0}}, "causal"]}}']
    one = cli("run", *common, "train.batch_size=8", "runtime.name=one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = cli("run", *common, "train.batch_size=4", "runtime.devices=2", "runtime.name=two", env={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    b = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    for k in ("align_loss", "mim_loss", "mlm_loss"):
        assert k in a and k in b
        assert abs(a[k] - b[k]) < 1e-4 * max(1.0, abs(a[k])), (k, a[k], b[k])
    assert json.loads((tmp_path / "two" / "environment.json").read_text())["world_size"] == 2
