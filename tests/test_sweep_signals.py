"""A sweep stopped by a signal: the runs in progress checkpoint at their step (with
``--jobs 2`` the signal is passed on to each child process), no run starts after it, the sweep
exits 75 (130 for SIGINT) in one line, and the same sweep command then continues: finished runs
kept, stopped ones resumed from their checkpoint, every step logged once. Real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from maskkit.training.checkpointing import run_checkpoints
from maskkit.training.preemption import exit_status

from run_helpers import SMALL, env_for, error_lines, steps, wait_until

STEPS = 20


def sweep(out, jobs: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "maskkit.cli", "sweep", "--presets", "t3_attmim", "--grid",
                             "image_mask.child_ratio=0.5,0.7", "--seeds", "0", "--out", str(out), "--jobs", str(jobs),
                             *SMALL, "data.val_n=16", f"train.steps={STEPS}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(), start_new_session=True)


def runs(out):
    return sorted((out / "runs").glob("*")) if (out / "runs").is_dir() else []


@pytest.mark.parametrize("jobs,sig,target", [
    (1, signal.SIGTERM, "parent"),
    pytest.param(2, signal.SIGUSR2, "parent", marks=pytest.mark.slow),
    pytest.param(2, signal.SIGINT, "group", marks=pytest.mark.slow),
], ids=["jobs1-SIGTERM", "jobs2-SIGUSR2-parent", "jobs2-SIGINT-group"])
def test_a_stopped_sweep_checkpoints_its_runs_and_continues(tmp_path, jobs, sig, target):
    out = tmp_path / "sw"
    proc = sweep(out, jobs)
    started = 1 if jobs == 1 else 2
    wait_until(lambda: len(runs(out)) == started and all(len(steps(r)) >= 3 for r in runs(out)), proc,
               f"{started} run(s) at step 3", every=0.02)
    if target == "group":
        os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C or a scheduler: the sweep and its children at once
    else:
        proc.send_signal(sig)  # the sweep's process only: it passes the signal on
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == exit_status(sig.name), err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"error: sweep {out}: stopped by {sig.name}, 0 of 2 runs done"), err[-3000:]
    assert "run the same sweep command again" in lines[0] and "Traceback" not in err
    assert len(runs(out)) == started  # no run started after the signal
    for r in runs(out):  # each run in progress: the checkpoint of the step it was in
        last = steps(r)[-1]
        assert 3 <= last < STEPS and run_checkpoints(r)[-1].name == f"step_{last:08d}.pt" and not (r / "done.json").exists()
        assert f"{r.name}: stopped by {sig.name} after step {last} of {STEPS}" in lines[0]
    if sig is signal.SIGINT:
        return
    again = sweep(out, jobs)  # the requeued job: the same command
    _, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    assert len(runs(out)) == 2 and all(steps(r) == list(range(1, STEPS + 1)) for r in runs(out))
    assert all(json.loads((r / "done.json").read_text())["steps"] == STEPS for r in runs(out))
    assert err.count("resumed from") == started and (out / "results.md").is_file()
