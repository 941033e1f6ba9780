"""maskkit run: resume equivalence, run directories, bad input, 2-process DDP."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch

from maskkit.config import resolve
from maskkit.errors import MaskkitError
from maskkit.train import TrainingError, train

SMALL = ["data.n=24", "data.val_n=0", "train.batch_size=4", "train.log_every=1", "train.ckpt_every=10",
         "train.warmup_steps=5", "runtime.progress=false", "runtime.evaluations=[]",
         "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1", "model.mim.decoder_heads=2"]


def cfg_for(tmp_path, *extra):
    return resolve(SMALL + [f"runtime.out_dir={tmp_path}"] + list(extra))


def losses(result, steps):
    """Each step's losses as a tensor; a loss without targets at a step (None) is NaN (compare with equal_nan)."""
    return torch.tensor([[math.nan if r.get(k) is None else r[k] for k in ("align_loss", "mim_loss", "mlm_loss")]
                         for r in result.losses if r["step"] in steps])


@pytest.mark.slow
def test_resume_gives_the_same_losses(tmp_path):
    full = train(*cfg_for(tmp_path, "train.steps=20", "runtime.name=full"))
    part = train(*cfg_for(tmp_path, "train.steps=10", "runtime.name=part"))
    assert part.step == 10 and (tmp_path / "part" / "checkpoints" / "step_00000010.pt").is_file()
    resumed = train(*cfg_for(tmp_path, "train.steps=20", "runtime.name=part", "runtime.resume=latest"))
    assert [r["step"] for r in resumed.losses] == list(range(11, 21))
    torch.testing.assert_close(losses(resumed, range(11, 21)), losses(full, range(11, 21)), equal_nan=True)
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


@pytest.mark.slow
def test_a_second_run_gets_a_numbered_directory(tmp_path):
    """The README's command run twice: the second run gets <name>-2 (then -3); resume=latest
    continues the newest; overwrite replaces the first."""
    a = train(*cfg_for(tmp_path, "train.steps=1"))
    b = train(*cfg_for(tmp_path, "train.steps=1"))
    c = train(*cfg_for(tmp_path, "train.steps=1"))
    assert [a.run_dir.name, b.run_dir.name, c.run_dir.name] == ["xlip-tiny-seed0", "xlip-tiny-seed0-2", "xlip-tiny-seed0-3"]
    r = train(*cfg_for(tmp_path, "train.steps=2", "runtime.resume=latest"))
    assert r.run_dir.name == "xlip-tiny-seed0-3" and [x["step"] for x in r.losses] == [2]
    env = json.loads((r.run_dir / "environment.json").read_text())
    assert len(env["resumes"]) == 1 and env["resumes"][0]["plugins"] and "resumes" not in env["resumes"][0]
    o = train(*cfg_for(tmp_path, "train.steps=1", "runtime.overwrite=true"))
    assert o.run_dir.name == "xlip-tiny-seed0"


def test_run_record_reproduces_the_run(tmp_path):
    """config.json holds every strategy tree with its defaults filled in; environment.json the
    installed plugins with their versions."""
    from maskkit.compose import build_strategy, to_spec

    train(*cfg_for(tmp_path, "train.steps=1", "runtime.name=r"))
    rec = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    union = rec["image_mask"]["union"]
    assert union["subset"] == "uniform" and union["fill"] == "score"  # defaults written out
    assert union["of"][0]["report_cross"]["ratio"] == 0.7             # children expanded, child_ratio applied
    assert to_spec(build_strategy(rec["image_mask"])) == rec["image_mask"]
    env = json.loads((tmp_path / "r" / "environment.json").read_text())
    names = {p["distribution"] for p in env["plugins"]}
    assert "maskkit (built-in)" in names and all(p["version"] for p in env["plugins"] if "failed" not in p)
    if os.environ.get("MASKKIT_EXPECT_PLUGINS"):
        assert "maskkit-blockwise" in names


def test_strategy_output_is_checked_where_it_is_used(tmp_path):
    """A plugin strategy returning a float mask or [B, N-1] stops the run with one line naming it."""
    from maskkit.core import MaskStrategy
    from maskkit.plugins import get_registry

    class FloatMask(MaskStrategy):
        name = "float_mask"
        stochastic = False

        def mask(self, ctx):
            return ctx.image_tokens[..., 0].float()

    class ShortMask(MaskStrategy):
        name = "short_mask"
        stochastic = False

        def mask(self, ctx):
            return torch.zeros(ctx.image_tokens.shape[0], ctx.image_tokens.shape[1] - 1, dtype=torch.bool)

    reg = get_registry()
    reg.add_strategy(FloatMask, "test")
    reg.add_strategy(ShortMask, "test")
    with pytest.raises(MaskkitError, match=r"image_mask: strategy 'float_mask' returned a torch.float32 mask; expected torch.bool \[4, 36\]"):
        train(*cfg_for(tmp_path, "train.steps=1", "runtime.name=f", "image_mask=float_mask"))
    with pytest.raises(MaskkitError, match=r"image_only_mask: strategy 'short_mask' returned shape \[4, 35\]; expected torch.bool \[4, 36\]"):
        train(*cfg_for(tmp_path, "train.steps=1", "runtime.name=s", "image_mask=random", "image_only_mask=short_mask"))


@pytest.mark.slow
def test_elastic_restart_resumes_from_latest(tmp_path, monkeypatch):
    train(*cfg_for(tmp_path, "train.steps=10", "runtime.name=e"))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    r = train(*cfg_for(tmp_path, "train.steps=12", "runtime.name=e"))
    assert [x["step"] for x in r.losses] == [11, 12]


def test_nan_losses_skip_then_stop(tmp_path):
    """NaN losses (a NaN image in the batches of steps 2-4) are skipped; 3 in a row stop the run in
    one line. (train.lr=1e30, which used to provoke them, is now refused before the run: lr in (0, 1].)"""
    from test_optimizer_step import run_faulty

    with pytest.raises(TrainingError, match=r"^train.max_bad_steps: 3 steps in a row with a non-finite loss, gradient or buffer, "
                                            r"last at step 4: non-finite loss \(align_loss=nan"):
        run_faulty(tmp_path, "train.steps=5", "train.max_bad_steps=3", "runtime.name=n", kind="input", at=(2, 3, 4))
    with pytest.raises(MaskkitError, match=r"^train.lr: Input should be less than or equal to 1 \(got 1e\+30\)"):
        cfg_for(tmp_path, "train.lr=1e30")


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


# deterministic, row-wise masks, so that one process and two mask the same tokens
DETERMINISTIC = ['image_mask={"image_self": {"ratio": 0.75}}', 'image_only_mask={"prompt_driven": {"ratio": 0.5}}',
                 'text_mask={"intersect": {"of": [{"random": {"modality": "text", "ratio": 1.0}}, "causal"]}}']
TINY = ["data.val_n=0", "train.log_every=1", "runtime.progress=false", "runtime.evaluations=[]",
        "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1", "model.mim.decoder_heads=2"]
#: TINY for data=csv: data.val_n is the phantoms' option (a key nothing reads is refused)
TINY_CSV = [a for a in TINY if not a.startswith("data.")]


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _uneven_steps(n, p_unpaired, batch, steps, accum):
    """Steps at which one of two ranks holds only image-only samples (so the test covers them)."""
    from maskkit.data.dataset import PhantomDataset
    from maskkit.data.loader import MixtureBatchSampler
    from maskkit.distributed import DistInfo

    ds = PhantomDataset(n, 0, 96, p_unpaired=p_unpaired)
    ranks = [MixtureBatchSampler([n], [1.0], batch, 0, DistInfo(r, 2)) for r in range(2)]
    out = []
    for step in range(steps):
        held = [[ds.reports[i] is not None for m in range(accum) for i in s.batch_indices(step * accum + m)] for s in ranks]
        if any(not any(h) for h in held) and any(any(h) for h in held):
            out.append(step)
    return out


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_in_uneven_cases(tmp_path):
    """Two gloo ranks x batch 1 with grad_accum=2, half the samples image-only (so that at some
    steps one rank holds no paired sample), a warm-up step then joint steps: the run completes and
    every logged loss equals that of one process x batch 2 (the same samples per step)."""
    common = [*TINY, *DETERMINISTIC, "data.n=24", "data.p_unpaired=0.5", "train.steps=4", "train.warmup_steps=1",
              "train.grad_accum=2", f"runtime.out_dir={tmp_path}"]
    assert _uneven_steps(24, 0.5, 1, 4, 2), "the data must give a step where one rank is all image-only"
    one = cli("run", *common, "train.batch_size=2", "runtime.name=one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = cli("run", *common, "train.batch_size=1", "runtime.devices=2", "runtime.name=two", env={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [x["step"] for x in a] == [x["step"] for x in b] == [1, 2, 3, 4] and a[0]["warmup"] and not a[1]["warmup"]
    for x, y in zip(a, b):
        for k in ("align_loss", "mim_loss", "mlm_loss"):
            assert (x[k] is None) == (y[k] is None), (x["step"], k, x[k], y[k])  # null: no target in the step
            assert x[k] is None or abs(x[k] - y[k]) < 1e-4 * max(1.0, abs(x[k])), (x["step"], k, x[k], y[k])
    assert json.loads((tmp_path / "two" / "environment.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_issue_command_with_random_masks_completes_on_two_ranks(tmp_path):
    """The reported hang: preset=xlip, 2 CPU ranks, batch 1, half image-only (random union masks)."""
    out = cli("run", "preset=xlip", "runtime.devices=2", "runtime.device=cpu", "train.batch_size=1", "data.p_unpaired=0.5",
              *TINY, "data.n=24", "train.steps=6", "train.warmup_steps=2", f"runtime.out_dir={tmp_path}", "runtime.name=x",
              env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert [m["step"] for m in _metrics(tmp_path / "x")] == [1, 2, 3, 4, 5, 6]


def _csv_with_a_truncated_png(tmp_path, n=12, bad=(3,)):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["image_path,report,patient_id"]
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(p)
        rows.append(f"{p},Heart size is normal. Case {i}.,p{i}")
    for b in bad:
        f = tmp_path / f"img{b}.png"
        f.write_bytes(f.read_bytes()[:200])  # truncated
    csv = tmp_path / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


@pytest.mark.slow
def test_skipped_image_is_replaced_in_training(tmp_path):
    """The reported input: 12 images, one a truncated PNG, batch size 1. The run completes; the
    skip is reported as a skip (not as an image size)."""
    csv = _csv_with_a_truncated_png(tmp_path)
    out = cli("run", "preset=xlip", "data=csv", f"data.path={csv}", "train.batch_size=1", *TINY_CSV, "train.steps=14",
              "train.warmup_steps=2", "data.max_skip_fraction=0.2", f"runtime.out_dir={tmp_path}", "runtime.name=c")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped" in out.stderr and "img3.png" in out.stderr and "px" not in out.stderr
    assert len(_metrics(tmp_path / "c")) == 14


def test_a_short_run_on_mostly_broken_data_stops_on_every_rank(tmp_path):
    """12 of 16 files corrupt, 2 ranks, a few steps: the skip limit stops the run (exit 2, one line
    from rank 0), decided on the counts of all ranks so no rank is left waiting."""
    csv = _csv_with_a_truncated_png(tmp_path, n=16, bad=tuple(range(12)))
    out = cli("run", "preset=xlip", "data=csv", f"data.path={csv}", "train.batch_size=2", *TINY_CSV, "train.steps=6",
              "train.warmup_steps=2", "runtime.devices=2", f"runtime.out_dir={tmp_path}", "runtime.name=m",
              env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    assert sum("failed to decode" in l for l in err) == 1 and "data.max_skip_fraction=0.05" in out.stderr
    assert "Traceback" not in out.stderr and "ChildFailedError" not in out.stderr


@pytest.mark.slow
def test_skipped_image_under_two_ranks(tmp_path):
    csv = _csv_with_a_truncated_png(tmp_path)
    out = cli("run", "preset=xlip", "data=csv", f"data.path={csv}", "train.batch_size=1", *TINY_CSV, "train.steps=8",
              "train.warmup_steps=2", "data.max_skip_fraction=0.3", "runtime.devices=2", f"runtime.out_dir={tmp_path}",
              "runtime.name=c2", env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(_metrics(tmp_path / "c2")) == 8


@pytest.mark.slow
def test_loader_workers_read_the_same_batches(tmp_path):
    """Two DataLoader worker processes give the losses of loading in the training process, step by
    step (same order, same token fields computed in the workers)."""
    a = train(*cfg_for(tmp_path, "train.steps=6", "runtime.name=w0", "data.num_workers=0"))
    b = train(*cfg_for(tmp_path, "train.steps=6", "runtime.name=w2", "data.num_workers=2"))
    torch.testing.assert_close(losses(a, range(1, 7)), losses(b, range(1, 7)), equal_nan=True)


def test_a_run_that_fails_before_its_first_step_leaves_no_directory(tmp_path):
    """Every image of the CSV is corrupt: the run stops before step 1 and removes the directory it
    made, so the next run takes the name (not <name>-2). A directory that a resume reused, or one
    holding logged steps, is kept."""
    csv = _csv_with_a_truncated_png(tmp_path, n=8, bad=tuple(range(8)))
    broken = ["data=csv", f"data.path={csv}", "train.batch_size=4", *TINY_CSV, "train.steps=3", "train.warmup_steps=1"]
    with pytest.raises(MaskkitError):
        train(*resolve(broken + [f"runtime.out_dir={tmp_path / 'runs'}"]))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    ok = train(*cfg_for(tmp_path / "runs", "train.steps=1"))
    assert ok.run_dir.name == "xlip-tiny-seed0"
    with pytest.raises(MaskkitError):  # a resume of that run on broken data: its directory stays
        train(*resolve(broken + [f"runtime.out_dir={tmp_path / 'runs'}", "runtime.resume=latest"]))
    assert (ok.run_dir / "checkpoints").is_dir() and (ok.run_dir / "metrics.jsonl").read_text()


def test_a_checkpoint_from_before_patch_embed_loads_with_the_linear_embedding(tmp_path):
    """Runs saved before ``model.patch_embed`` existed (A31) have a linear patch embedding and no
    such key in their config: they must load as they were, not as today's tiny default (conv stem)."""
    from maskkit.model import XLIP
    from maskkit.training.checkpointing import load_model, save_checkpoint

    cfg, _ = resolve(["preset=xlip", "model.patch_embed=linear"])
    torch.manual_seed(0)
    old = XLIP.from_experiment(cfg).eval()
    saved = json.loads(cfg.model_dump_json())
    del saved["model"]["patch_embed"]
    save_checkpoint(tmp_path / "step_00000001.pt", {"config": json.dumps(saved), "model": old.state_dict()})
    model, loaded = load_model(tmp_path / "step_00000001.pt")
    assert loaded.model.patch_embed == "linear" and isinstance(model.clip.visual.conv1, torch.nn.Conv2d)
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x)[0], old.encode_image(x)[0])
    assert resolve(["preset=xlip"])[0].model.patch_embed == "conv_stem"  # while new runs get the stem


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """ENOSPC while writing a checkpoint (a sweep filled the disk): one line naming the file and the
    OS's reason, not a traceback; the checkpoint written before is intact and still loads."""
    import errno

    import maskkit.io as mio
    from maskkit.errors import OutputWriteError
    from maskkit.training.checkpointing import load_model

    cfg, src = resolve(["preset=xlip", *TINY, "data.n=8", "train.batch_size=4", "train.steps=4", "train.warmup_steps=1",
                        "train.ckpt_every=2", f"runtime.out_dir={tmp_path}", "runtime.name=d"])
    real = os.fsync

    def full_after_first_checkpoint(fd):  # the disk fills while a checkpoint is flushed to it
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.startswith(".step_") and not name.startswith(".step_00000002.pt."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(mio.os, "fsync", full_after_first_checkpoint)
    with pytest.raises(OutputWriteError) as e:
        train(cfg, src)
    ck = tmp_path / "d" / "checkpoints"
    assert str(e.value) == (f"cannot write checkpoint {ck / 'step_00000004.pt'} (No space left on device; abandoned whole); the "
                            f"latest checkpoint, {ck / 'step_00000002.pt'}, is intact: run the same command with "
                            "runtime.resume=latest to continue from it")
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000002.pt"]
    load_model(ck / "step_00000002.pt")


def test_resume_latest_of_a_new_name_fails_and_leaves_no_directory(tmp_path):
    """A mistaken runtime.resume=latest must not leave a directory that then blocks a plain run."""
    with pytest.raises(TrainingError, match=r"runtime.resume=latest: no checkpoint in"):
        train(*cfg_for(tmp_path, "train.steps=2", "runtime.name=nock", "runtime.resume=latest"))
    assert not (tmp_path / "nock").exists()
    assert train(*cfg_for(tmp_path, "train.steps=1", "runtime.name=nock")).step == 1


def test_a_run_directory_without_a_checkpoint_names_the_way_to_start_again(tmp_path):
    """A run that failed before its first checkpoint (a full disk at the first save) keeps its
    directory: the plain command and runtime.resume=latest each name runtime.resume=auto, which
    starts again at step 0 in it and logs each step once."""
    train(*cfg_for(tmp_path, "train.steps=2", "runtime.name=nc"))
    for ck in (tmp_path / "nc" / "checkpoints").iterdir():
        ck.unlink()
    with pytest.raises(TrainingError) as e:
        train(*cfg_for(tmp_path, "train.steps=2", "runtime.name=nc"))
    assert str(e.value) == (f"{tmp_path / 'nc'}: run directory exists and holds no checkpoint (an earlier attempt stopped before "
                            "its first); pass runtime.resume=auto to start again in it, runtime.overwrite=true to replace it, "
                            "or choose another runtime.name")
    with pytest.raises(TrainingError) as e:
        train(*cfg_for(tmp_path, "train.steps=2", "runtime.name=nc", "runtime.resume=latest"))
    assert str(e.value).endswith(f"; runtime.resume=auto continues the newest one or, when there is none, starts again at step 0 "
                                 f"in {tmp_path / 'nc'}")
    assert train(*cfg_for(tmp_path, "train.steps=2", "runtime.name=nc", "runtime.resume=auto")).step == 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "nc" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 2
