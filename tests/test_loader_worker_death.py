"""A DataLoader worker killed (the OOM killer's SIGKILL): one line naming the cause
and the remedy (data.num_workers, memory); the checkpoints written before stay intact."""

from __future__ import annotations

import os
import signal

from maskkit.training.checkpointing import load_model, run_checkpoints

from run_helpers import SMALL, children, start, wait_for_steps


def test_a_killed_loader_worker_stops_the_run_in_one_line(tmp_path):
    run = tmp_path / "w"
    proc = start(*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=w", "train.steps=500", "train.ckpt_every=2",
                 "data.num_workers=2")
    wait_for_steps(proc, run, 3)
    workers = children(proc.pid)  # the training process's children: its two DataLoader workers
    assert workers, "the DataLoader's worker processes"
    os.kill(max(workers), signal.SIGKILL)  # as the OOM killer does
    _, err = proc.communicate(timeout=300)
    lines = [l for l in err.splitlines() if l.strip()]
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    errors = [l for l in lines if l.startswith("error:")]  # the run's log lines (one per source) come before it
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    assert errors[0].startswith("error: data.num_workers: a DataLoader worker process died (killed by SIGKILL)"), err[-3000:]
    assert "lower data.num_workers (now 2)" in errors[0] and "more memory" in errors[0]
    assert all(l.startswith(("source ", "error:")) for l in lines), err[-3000:]  # log lines are not wrapped
    ck = run_checkpoints(run)[-1]
    load_model(ck)  # intact
