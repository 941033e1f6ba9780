"""A failure under another error: torch's checkpoint writer raises its
own ``unexpected pos`` RuntimeError over the real cause (a full disk's OSError, the RuntimeError with
which torch reports a dead DataLoader worker, a signal's Stopped). The CLI reports the root cause in
one line naming the file, exit 2; the previous checkpoint stays intact. Real files, real limits,
real processes."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from maskkit.cli import failure_line
from maskkit.config import resolve
from maskkit.errors import OutputWriteError, TrainingError, exception_chain
from maskkit.io import atomic_open
from maskkit.train import train
from maskkit.training.checkpointing import load_model, save_checkpoint
from maskkit.training.preemption import Stopped

from run_helpers import SMALL, children, env_for, error_lines, start


class _FileSizeLimit:
    """RLIMIT_FSIZE of this process lowered to ``n`` bytes (SIGXFSZ ignored, so that a write past it
    fails with EFBIG as a full disk fails with ENOSPC); restored on leaving."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self):
        self.before = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.n, self.before[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.before)
        signal.signal(signal.SIGXFSZ, self.handler)


def _limit_file_size(n: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return pre


def test_the_root_cause_is_found_under_the_error_raised_over_it(tmp_path):
    """Chains as Python builds them (an error raised while handling another): the OSError under a
    RuntimeError, a Stopped under one; an error maskkit raised ``from None`` hides what it replaces."""
    def nested(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3720064 vs 3719952")
        except RuntimeError as outer:
            return outer

    full = nested(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "step_00000004.pt")))
    assert [type(e) for e in exception_chain(full)] == [RuntimeError, OSError]
    line, code, _ = failure_line(full)
    assert code == 2 and line == f"{tmp_path / 'step_00000004.pt'}: No space left on device (ENOSPC)"
    stop = nested(Stopped("SIGTERM"))
    assert failure_line(stop)[1] == 75 and "stopped by SIGTERM" in failure_line(stop)[0]
    assert failure_line(nested(ValueError("a bug"))) is None  # a bug keeps its traceback
    try:
        try:
            raise Stopped("SIGINT")
        except Stopped:
            raise TrainingError("what the run says of its stop") from None
    except TrainingError as exc:
        assert failure_line(exc) == ("what the run says of its stop", 2, False)


def test_a_checkpoint_that_does_not_fit_is_one_error_and_the_previous_file_is_intact(tmp_path):
    """torch.save streamed through atomic_open past the file-size limit: torch raises
    ``unexpected pos`` over the OSError; atomic_open reports the OSError (the file, the OS's reason,
    its errno), removes its temporary file and leaves the previous checkpoint as it was."""
    path = tmp_path / "step_00000002.pt"
    save_checkpoint(path, {"w": torch.zeros(10)})
    before = path.read_bytes()
    with _FileSizeLimit(1 << 20), pytest.raises(OutputWriteError) as ei:
        save_checkpoint(path, {"w": torch.zeros(1 << 20)})  # 4 MB
    assert ei.value.errno == errno.EFBIG and str(ei.value) == f"cannot write {path}: File too large (any previous version of it is unchanged)"
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_error_raised_over_a_stop_inside_a_write_is_the_stop(tmp_path):
    """A writer's clean-up error over a Stopped (a second Ctrl-C inside torch.save): the Stopped."""
    with pytest.raises(Stopped):
        with atomic_open(tmp_path / "f") as f:
            f.write(b"x")
            try:
                raise Stopped("SIGINT", again=True)
            except Stopped:
                raise RuntimeError("unexpected pos 1 vs 2")
    assert list(tmp_path.iterdir()) == []


def _tmpfs_available(path) -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {path}"], capture_output=True)
    return r.returncode == 0


def test_a_full_disk_while_a_run_writes_its_checkpoint_is_one_line(tmp_path):
    """The run's first checkpoint fits, the second does not: exit 2, one line naming the checkpoint
    and the OS's reason (not torch's "unexpected pos"), the first checkpoint intact and loadable.
    As root, a real full disk (ENOSPC: a 300 MB tmpfs in a private mount namespace; a tiny
    model's checkpoint is ~190 MB); otherwise the file-size limit (EFBIG) on the resumed run."""
    disk = tmp_path / "disk"
    disk.mkdir()
    args = [*SMALL, f"runtime.out_dir={disk}", "runtime.name=f", "train.ckpt_every=2"]
    cli = [sys.executable, "-m", "maskkit.cli", "run"]
    if _tmpfs_available(disk):
        # inside the namespace, after the run: what is left in the tmpfs (gone with the namespace)
        report = tmp_path / "left.txt"
        check = (f"from maskkit.training.checkpointing import load_model, run_checkpoints; from pathlib import Path; "
                 f"r = Path({str(disk / 'f')!r}); load_model(r); "
                 f"print(' '.join(sorted(p.name for p in (r / 'checkpoints').iterdir())))")
        script = (f'mount -t tmpfs -o size=300m tmpfs {disk} && {{ "$@"; rc=$?; {sys.executable} -c "{check}" > {report}; exit $rc; }}')
        out = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *cli, *args, "train.steps=4"],
                             capture_output=True, text=True, env=env_for())
        reason, advice = "No space left on device", "run the same command with runtime.resume=latest"
        assert report.read_text().split() == ["step_00000002.pt"]  # loaded, and no temporary file left
    else:
        train(*resolve([*args, "train.steps=2"]))
        out = subprocess.run([*cli, *args, "train.steps=4", "runtime.resume=latest"], capture_output=True, text=True,
                             env=env_for(), preexec_fn=_limit_file_size(50_000_000))
        reason, advice = "File too large", "run the same command again"
        assert [p.name for p in (disk / "f" / "checkpoints").iterdir()] == ["step_00000002.pt"]
        load_model(disk / "f")
    err = out.stderr
    assert out.returncode == 2 and "Traceback" not in err and "unexpected pos" not in err, err[-3000:]
    ck = disk / "f" / "checkpoints"
    assert error_lines(err) == [f"error: cannot write checkpoint {ck / 'step_00000004.pt'} ({reason}; abandoned whole); the latest "
                                f"checkpoint, {ck / 'step_00000002.pt'}, is intact: {advice} to continue from it"], err[-3000:]


def test_a_worker_killed_while_the_checkpoint_is_written_is_one_line(tmp_path):
    """The main process is stopped (SIGSTOP) inside torch.save of its second checkpoint, a
    DataLoader worker is killed, the main process continues: torch's report of the dead worker is
    raised inside the write, torch's writer raises over it; the run says the worker's death in one
    line (exit 2) naming the abandoned checkpoint and the intact one, which loads."""
    for attempt in range(4):  # the write can finish before SIGSTOP lands, or after it (a loaded machine): then start again
        run = tmp_path / f"w{attempt}"
        proc = start(*SMALL, f"runtime.out_dir={tmp_path}", f"runtime.name=w{attempt}", "train.steps=500",
                     "train.ckpt_every=2", "data.num_workers=2")
        ck = run / "checkpoints"
        end = time.monotonic() + 300
        while not (ck.is_dir() and list(ck.glob(".step_00000004.pt.*"))):
            assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()[-3000:] if proc.poll() is not None else "timeout"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGSTOP)
        if not (list(ck.glob(".step_00000004.pt.*")) and not (ck / "step_00000004.pt").exists()):
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
            continue
        try:
            workers = children(proc.pid)
            assert workers
            os.kill(max(workers), signal.SIGKILL)
            time.sleep(0.2)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and "Traceback" not in err and "During handling" not in err, err[-3000:]
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith("error: data.num_workers: a DataLoader worker process died (killed by SIGKILL)"), err[-3000:]
        if (ck / "step_00000004.pt").exists():  # stopped in its fsync or rename: the write finished, the death came after
            latest = sorted(ck.glob("step_*.pt"))[-1]  # (later ones too, when torch noticed the death steps later)
            assert lines[0].endswith(f"the latest checkpoint, {latest}, is intact: run the same command "
                                     "with runtime.resume=latest to continue from it"), lines[0]
            assert not list(ck.glob(".*.tmp")), sorted(ck.iterdir())
            assert "abandoned" not in lines[0]
            continue
        assert lines[0].endswith(f"step_00000004.pt was being written and is abandoned; the latest checkpoint, {ck / 'step_00000002.pt'}, "
                                 "is intact: run the same command with runtime.resume=latest to continue from it"), lines[0]
        assert sorted(p.name for p in ck.iterdir()) == ["step_00000002.pt"]
        load_model(run)
        return
    pytest.fail("the checkpoint write finished before the worker's death was raised in it four times")


def test_a_checkpoint_left_unfinished_by_a_killed_process_is_removed_when_the_run_continues(tmp_path, capsys):
    """SIGKILL inside ``torch.save`` (a grace period that ran out, the out-of-memory killer) leaves
    the checkpoint's temporary file, which no clean-up of the killed process can remove: the run
    that continues from the directory (it holds its lock) removes it, says so, and continues from
    the latest finished checkpoint; the finished ones are kept."""
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=k", "train.ckpt_every=2"]
    train(*resolve([*args, "train.steps=2"]))
    ck = tmp_path / "k" / "checkpoints"
    left = ck / ".step_00000004.pt.x1y2z3.tmp"
    left.write_bytes(b"PK\x03\x04 a zip cut short")
    capsys.readouterr()
    train(*resolve([*args, "train.steps=4", "runtime.resume=latest"]))
    out = capsys.readouterr().err
    assert f"removed 1 unfinished checkpoint file(s) an earlier process left in {ck} ({left.name})" in " ".join(out.split())
    assert "resumed from" in out and "at step 2" in out
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000002.pt", "step_00000004.pt"]
