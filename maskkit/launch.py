"""torchrun with a one-line failure: ``python -m maskkit.launch [torchrun args] -m maskkit.cli run ...``.

It is ``torch.distributed.run`` itself (same arguments, same elastic agent), except that:

- when a worker fails it exits with the exit status of the first worker that failed (:func:`failure_status`)
  and leaves the error to the worker (which prints one line, on rank 0), instead of printing the
  agent's ``ChildFailedError`` report;
- the agent forwards every stop signal (:data:`~maskkit.training.preemption.STOP_SIGNALS`: SIGUSR1
  of SLURM's ``--signal=USR1@<s>``, submitit's SIGUSR2, as well as torchrun's own SIGTERM and SIGINT)
  to its workers, so that they checkpoint and stop; a signal that stopped the agent gives exit
  status 75 (130 for SIGINT, :func:`~maskkit.training.preemption.exit_status`);
- the agent passes a stop signal on once: the same signal delivered again within
  :data:`~maskkit.training.preemption.AGAIN_AFTER_S` (a scheduler signals every process of a job,
  the terminal every process of its group, and ``maskkit run runtime.devices=N`` forwards it too)
  is dropped, and a later one (a second Ctrl-C) is passed to the workers as it is. torchrun alone
  would end its graceful wait for the workers at the second delivery and send them SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path


def forwarded_signals() -> str:
    """torchrun's default set (``torch.distributed.elastic.multiprocessing.api``) plus every stop
    signal, as ``--signals-to-handle`` takes them."""
    from .training.preemption import STOP_SIGNALS

    names = ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"]
    return ",".join(names + [s.name for s in STOP_SIGNALS if s.name not in names])


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc; none where there is no /proc)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _once_then_to_workers(original):
    """The agent's signal handler: torchrun's (``original``: raise ``SignalException``, which makes
    the agent forward the signal and wait for the workers) for the first stop signal; a repeat
    within AGAIN_AFTER_S is dropped; a later signal is sent to the workers' process groups directly
    (each worker leads its own session), so that their own rule (a second SIGINT stops at once) applies."""
    from .training.preemption import AGAIN_AFTER_S

    first: dict = {}

    def handle(signum, frame):
        now = time.monotonic()
        if not first:
            first["at"] = now
            original(signum, frame)
            return
        if now - first["at"] < AGAIN_AFTER_S:
            return
        for pid in _children(os.getpid()):
            try:
                os.killpg(pid, signum)
            except OSError:
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass

    return handle


def failure_status(exc) -> int:
    """The exit status of a run whose workers failed: the first failure's (the cause; the agent
    then ends the other workers with SIGTERM, and what they exit with says nothing about the run:
    75 from one of them must not make a scheduler requeue a run that failed). A worker killed by a
    signal gives 128 + its number, as a shell reports it."""
    failures = [f for f in exc.failures.values() if isinstance(f.exitcode, int) and f.exitcode != 0]
    if not failures:
        return 1
    first = min(failures, key=lambda f: f.timestamp)
    return first.exitcode if first.exitcode > 0 else 128 - first.exitcode


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing import api as mp_api
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from .training.preemption import STOP_SIGNALS, exit_status

    # torchrun's --signals-to-handle (whose default it reads from PET_SIGNALS_TO_HANDLE) sets the
    # agent's TORCHELASTIC_SIGNALS_TO_HANDLE; an explicit --signals-to-handle still wins
    os.environ.setdefault("PET_SIGNALS_TO_HANDLE", forwarded_signals())
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", forwarded_signals())  # torch before that option
    if callable(getattr(mp_api, "_terminate_process_handler", None)):  # what PContext.start() installs
        mp_api._terminate_process_handler = _once_then_to_workers(mp_api._terminate_process_handler)
    for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]:  # its modules' loggers set their own level
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as exc:
        return failure_status(exc)
    except SignalException as exc:  # the workers got the signal and had the shutdown timeout to checkpoint
        return exit_status(signal.Signals(exc.sigval).name) if exc.sigval in STOP_SIGNALS else 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
