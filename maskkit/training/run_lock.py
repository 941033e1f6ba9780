"""The run directory's lock: one live run per directory.

A run holds an exclusive ``fcntl.flock`` on ``<run dir>/run.lock`` while it lives (rank 0 only
under DDP). The operating system releases the lock when the holder dies, however it dies (OOM
killer, SIGKILL, a lost node), so a dead holder's lock is stale by construction and simply taken
over; the file only records who holds it (host, pid, start time, command) for the refusal's
message. A second run on a live directory (a new run with ``runtime.overwrite=true``, a resume of
a run still training, a sweep started twice) refuses in one line naming the directory and the
holder.

Filesystems without ``flock`` (some Lustre mounts without ``-o flock``) give a one-line warning
and no lock, never a failed run.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from ..errors import TrainingError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

LOCK_NAME = "run.lock"


class RunDirLocked(TrainingError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """The held lock of one run directory; :meth:`release` (or the process's death) frees it."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock (creating the directory); :class:`RunDirLocked` when a live process holds it."""
        if fcntl is None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirLocked(f"{self.run_dir}: another run is using this run directory ({holder(self.path)}); "
                                       "wait for it to end, or choose another runtime.name / runtime.out_dir") from None
                warnings.warn(f"{self.path}: cannot lock the run directory ({exc.strerror}); nothing stops a second run "
                              "from using it at the same time", RuntimeWarning, stacklevel=2)
                return self
            try:  # the file we locked is still the one at the path (a releasing holder unlinks it)
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Free the lock and remove the file (it only matters while held)."""
        if self.fd is None:
            return
        try:  # only our own file: the directory may have been removed and another run's lock made since
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None


def holder(path: Path) -> str:
    """``host <h>, pid <p>, since <t>`` from a lock file, as far as it can be read."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        return f"host {rec['host']}, pid {rec['pid']}, since {rec['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
