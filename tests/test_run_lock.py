"""One live run per run directory: a run holds an OS lock on its directory; a
second run (overwrite, resume, a second sweep) refuses in one line naming the directory and the
holder; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from maskkit.config import resolve
from maskkit.train import train
from maskkit.training.preemption import EXIT_PREEMPTED
from maskkit.training.run_lock import LOCK_NAME, RunDirLocked, RunLock

from run_helpers import SMALL, start, steps, wait_for_steps

HOLD = "import sys, time; from maskkit.training.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


def holder_process(run_dir):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_lock_refuses_a_second_holder_and_is_freed_by_its_holders_death(tmp_path):
    holder = holder_process(tmp_path / "r")
    try:
        with pytest.raises(RunDirLocked, match=rf"{tmp_path / 'r'}: another run is using this run directory \(host \S+, pid {holder.pid}, since "):
            RunLock(tmp_path / "r").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((tmp_path / "r" / LOCK_NAME).read_text())["pid"] == holder.pid  # the dead holder's record stays
    lock = RunLock(tmp_path / "r").acquire()  # ... and its lock is stale
    assert json.loads((tmp_path / "r" / LOCK_NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(RunDirLocked):  # two runs in one process (a sweep): refused too
        RunLock(tmp_path / "r").acquire()
    lock.release()
    assert not (tmp_path / "r" / LOCK_NAME).exists()
    RunLock(tmp_path / "r").acquire().release()


def test_a_second_run_refuses_the_directory_of_a_live_run(tmp_path):
    """The issue's input: run B with runtime.overwrite=true in the directory of live run A. B
    refuses in one line (A's pid named) before deleting anything; so does a resume of A; A goes on
    and its metrics are whole. Once A is gone, resume=latest takes the directory over."""
    run = tmp_path / "a"
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=a", "train.ckpt_every=2"]
    a = start(*args, "train.steps=200")
    wait_for_steps(a, run, 2)
    for extra in ("runtime.overwrite=true", "runtime.resume=latest"):
        out = subprocess.run([sys.executable, "-m", "maskkit.cli", "run", *args, "train.steps=4", extra],
                             capture_output=True, text=True, timeout=600)
        err = out.stderr.strip()
        assert out.returncode == 2 and err.count("\n") == 0, err
        assert f"{run}: another run is using this run directory (host" in err and f"pid {a.pid}," in err
        assert a.poll() is None and (run / "checkpoints").is_dir()
    a.send_signal(signal.SIGTERM)
    a.communicate(timeout=300)
    assert a.returncode == EXIT_PREEMPTED
    logged = steps(run)
    assert logged == list(range(1, logged[-1] + 1))  # A's metrics whole, one line per step
    assert not (run / LOCK_NAME).exists()            # released at exit
    r = train(*resolve([*args, f"train.steps={logged[-1] + 1}", "runtime.resume=latest"]))
    assert r.step == logged[-1] + 1 and not (run / LOCK_NAME).exists()


def test_a_refused_overwrite_leaves_the_directory_as_it_was(tmp_path):
    """The lock is taken before overwrite deletes anything (in-process holder, as a sweep's)."""
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=o", "train.steps=1"]
    train(*resolve(args))
    before = sorted(p.name for p in (tmp_path / "o").rglob("*"))
    holder = RunLock(tmp_path / "o").acquire()
    try:
        with pytest.raises(RunDirLocked):
            train(*resolve([*args, "runtime.overwrite=true"]))
    finally:
        holder.release()
    assert sorted(p.name for p in (tmp_path / "o").rglob("*")) == before
    train(*resolve([*args, "runtime.overwrite=true"]))  # free again: overwrite works
