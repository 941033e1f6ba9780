"""Runs started at once with the default name: the second failed on
the first one's run lock instead of taking the next number. A new run's numbered name is claimed
atomically (mkdir, then the run lock; one claimed by another run in the meantime is passed over)."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys

from maskkit.config import resolve
from maskkit.distributed import DistInfo
from maskkit.training.run_dir import claim_run_dir
from maskkit.training.run_lock import RunLock

from run_helpers import SMALL, env_for, steps


def _claim_and_hold(out_dir, barrier, done, q):
    cfg, _ = resolve([f"runtime.out_dir={out_dir}"])
    barrier.wait()
    try:
        d, lock = claim_run_dir(cfg, DistInfo())
        (d / "config.json").write_text("{}")  # the run fills it (has_content) while it holds the lock
        q.put(d.name)
        done.wait()
        lock.release()
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        q.put(f"error: {exc}")


def test_runs_claiming_the_default_name_at_once_each_get_their_own(tmp_path):
    n = 6
    ctx = mp.get_context("fork")
    barrier, done, q = ctx.Barrier(n), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_and_hold, args=(tmp_path, barrier, done, q)) for _ in range(n)]
    for p in procs:
        p.start()
    names = sorted(q.get(timeout=120) for _ in range(n))
    done.set()
    for p in procs:
        p.join(timeout=60)
    assert names == sorted(["xlip-tiny-seed0"] + [f"xlip-tiny-seed0-{k}" for k in range(2, n + 1)]), names


def test_a_name_another_run_holds_but_has_not_filled_yet_is_passed_over(tmp_path):
    """The window of the fault: the other run made and locked the directory, nothing in it yet."""
    cfg, _ = resolve([f"runtime.out_dir={tmp_path}"])
    other = RunLock(tmp_path / "xlip-tiny-seed0").acquire()
    try:
        d, lock = claim_run_dir(cfg, DistInfo())
        assert d.name == "xlip-tiny-seed0-2"
        lock.release()
    finally:
        other.release()
    d, lock = claim_run_dir(cfg, DistInfo())  # an empty directory left behind and unlocked is taken again
    assert d.name == "xlip-tiny-seed0"
    lock.release()


def test_two_runs_started_at_once_both_train(tmp_path):
    """The issue's input: the same command twice at once, default name; both exit 0."""
    cmd = [sys.executable, "-m", "maskkit.cli", "run", *SMALL, f"runtime.out_dir={tmp_path}", "train.steps=1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for()) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xlip-tiny-seed0", "xlip-tiny-seed0-2"]
    assert steps(tmp_path / "xlip-tiny-seed0") == [1] and steps(tmp_path / "xlip-tiny-seed0-2") == [1]
