"""Preemption and requeue (issue 18, 3c): SIGTERM / SIGUSR1 make a run checkpoint at the step it
is in and exit 75; a resume logs each step once (metrics.jsonl lines past the resumed step are
dropped), however the run stopped and however it resumes. Real processes, real signals."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from maskkit.config import resolve
from maskkit.train import train
from maskkit.training.checkpointing import run_checkpoints
from maskkit.training.metric_logging import MetricLogger
from maskkit.training.preemption import EXIT_PREEMPTED

from run_helpers import SMALL, children, environ, losses, start, steps, wait_for_steps


def reference(tmp_path, n):
    """Losses of one uninterrupted run of ``n`` steps (in this process)."""
    r = train(*resolve([*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=ref", f"train.steps={n}"]))
    return {x["step"]: tuple(float("nan") if x.get(k) is None else x[k] for k in ("align_loss", "mim_loss", "mlm_loss"))
            for x in r.losses}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_checkpoints_the_current_step_and_the_resume_logs_each_step_once(tmp_path, sig):
    run = tmp_path / "p"
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=p", "train.ckpt_every=3"]
    proc = start(*args, "train.steps=200")
    wait_for_steps(proc, run, 5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    stop = steps(run)[-1]
    assert stop >= 5 and steps(run) == list(range(1, stop + 1))
    assert run_checkpoints(run)[-1].name == f"step_{stop:08d}.pt"  # the step it was in, not the last ckpt_every
    line = [l for l in err.splitlines() if "stopped by" in l]
    assert len(line) == 1 and f"stopped by {sig.name} after step {stop} of 200" in line[0] and "runtime.resume=latest" in line[0]
    assert "Traceback" not in err
    if sig is signal.SIGUSR1:
        return
    # the requeued job: the same command, resume=latest (fewer steps so the test stays short)
    end = stop + 2
    r = train(*resolve([*args, f"train.steps={end}", "runtime.resume=latest"]))
    assert [x["step"] for x in r.losses] == list(range(stop + 1, end + 1))
    assert steps(run) == list(range(1, end + 1))
    ref, got = reference(tmp_path, end), losses(run)
    torch.testing.assert_close(torch.tensor([got[s] for s in range(1, end + 1)]), torch.tensor([ref[s] for s in range(1, end + 1)]),
                               equal_nan=True)


def test_a_killed_run_resumed_from_an_older_checkpoint_logs_each_step_once(tmp_path):
    """The issue's input: killed (SIGKILL: no handler runs) after step 5 with a checkpoint at step
    3; resume=latest reads steps 1..8 once each, not 1,2,3,4,5,4,5,6,7,8."""
    run = tmp_path / "k"
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=k", "train.ckpt_every=3"]
    proc = start(*args, "train.steps=200")
    wait_for_steps(proc, run, 5)
    proc.kill()
    proc.communicate(timeout=60)
    logged, ck = steps(run), run_checkpoints(run)[-1]
    last_ck = int(ck.stem.split("_")[1])
    assert len(logged) >= 5 and last_ck % 3 == 0 and last_ck < logged[-1]  # lines past the checkpoint exist
    end = logged[-1] + 2
    train(*resolve([*args, f"train.steps={end}", "runtime.resume=latest"]))
    assert steps(run) == list(range(1, end + 1))


def test_resuming_from_an_explicit_older_checkpoint_drops_the_later_lines_and_checkpoints(tmp_path):
    """resume=<path of step 3> in a directory at step 6: the lines of steps 4-6 go, and so do the
    later checkpoints (renamed *.superseded), so that a later resume=latest does not pick them up."""
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=x", "train.ckpt_every=3", "train.keep_last=5"]
    train(*resolve([*args, "train.steps=6"]))
    run = tmp_path / "x"
    old = run / "checkpoints" / "step_00000003.pt"
    train(*resolve([*args, "train.steps=4", f"runtime.resume={old}"]))
    assert steps(run) == [1, 2, 3, 4]
    assert [p.name for p in run_checkpoints(run)] == ["step_00000003.pt", "step_00000004.pt"]
    assert (run / "checkpoints" / "step_00000006.pt.superseded").is_file()


def test_metric_logger_drops_lines_after_the_resumed_step_and_a_torn_line(tmp_path):
    lines = [json.dumps({"step": s, "loss": s}) for s in (1, 2, 3, 4, 5)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')
    log = MetricLogger(tmp_path, resume_step=3)
    log.write({"step": 4, "samples_per_s": 1.0}, {})
    log.close()
    assert steps(tmp_path) == [1, 2, 3, 4] and log.dropped == 3


def test_tensorboard_purges_the_steps_after_the_resume(tmp_path):
    """Events past the resumed step are purged for every tag, also one that the resumed run does
    not log again (so TensorBoard's own out-of-order clean-up, per tag, would not remove them)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricLogger(tmp_path)
    for s in range(1, 6):
        log.write({"step": s, "samples_per_s": 1.0}, {"mim_loss": float(s)})
    log.close()
    log = MetricLogger(tmp_path, resume_step=3)
    for s in (4, 5):
        log.write({"step": s, "samples_per_s": 1.0}, {"align_loss": 10.0 * s})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss/mim_loss")] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert [(e.step, e.value) for e in acc.Scalars("loss/align_loss")] == [(4, 40.0), (5, 50.0)]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rank1", "launcher"])
def test_under_ddp_every_rank_stops_after_the_same_step(tmp_path, target):
    """Two gloo ranks (``runtime.devices=2``). ``rank1``: SIGTERM to rank 1 only; both ranks stop
    after the same step (agreed through the step's all-reduce). ``launcher``: SIGUSR1 to the
    ``maskkit run`` process, as a user or SLURM sends it; it reaches the workers through
    maskkit.launch's agent. Rank 0 writes that step's checkpoint, the job exits 75 with one line
    and no process is left behind."""
    import os

    run = tmp_path / "d"
    proc = start(*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=d", "train.steps=200", "runtime.devices=2")
    wait_for_steps(proc, run, 3)
    procs = children(proc.pid)
    if target == "rank1":
        rank1 = [p for p in procs if environ(p).get("RANK") == "1"]
        assert rank1, "rank 1's process"
        os.kill(min(rank1), signal.SIGTERM)  # the worker itself, not a DataLoader worker of it (none here)
        said = "stopped by a signal on another rank after step"
    else:
        proc.send_signal(signal.SIGUSR1)
        said = "stopped by SIGUSR1 after step"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    stop = steps(run)[-1]
    assert steps(run) == list(range(1, stop + 1)) and run_checkpoints(run)[-1].name == f"step_{stop:08d}.pt"
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith(("launching", "source "))]  # less the log lines
    assert len(lines) == 1 and said in lines[0], err[-2000:]
    assert not [p for p in procs if os.path.exists(f"/proc/{p}") and environ(p)], "a process of the run is left"


def test_resume_auto_is_one_command_for_the_first_start_and_every_requeue(tmp_path):
    """``runtime.resume=auto``: no run directory -> a new run; a directory whose run died before its
    first checkpoint -> step 0 again in it, its logged lines dropped; a checkpoint -> resumed. The
    same arguments every time (what a requeued SLURM job repeats); ``latest`` refuses the second case."""
    from maskkit.errors import TrainingError

    run = tmp_path / "a"
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=a", "runtime.resume=auto", "train.ckpt_every=3"]
    first = train(*resolve([*args, "train.steps=2"]))  # a first start, cut short before any ckpt_every
    for ck in run_checkpoints(run):  # ... as if killed before its first checkpoint
        ck.unlink()
    assert steps(run) == [1, 2]
    with pytest.raises(TrainingError, match=r"runtime.resume=latest: no checkpoint in"):
        train(*resolve([*args[:-2], "runtime.resume=latest", "train.steps=4"]))
    again = train(*resolve([*args, "train.steps=4"]))
    assert [x["step"] for x in again.losses] == [1, 2, 3, 4] and steps(run) == [1, 2, 3, 4]
    assert [x["align_loss"] for x in again.losses[:2]] == [x["align_loss"] for x in first.losses]  # the same start
    resumed = train(*resolve([*args, "train.steps=5"]))
    assert [x["step"] for x in resumed.losses] == [5] and steps(run) == [1, 2, 3, 4, 5]
