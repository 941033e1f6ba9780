"""torchrun with a one-line failure: ``python -m maskkit.launch [torchrun args] -m maskkit.cli run ...``.

It is ``torch.distributed.run`` itself (same arguments, same elastic agent), except that when a
worker fails it exits with the worker's exit status and leaves the error to the worker (which
prints one line, on rank 0), instead of printing the agent's ``ChildFailedError`` report; and that
the agent also forwards SIGUSR1 (SLURM's ``--signal=USR1@<s>``) to its workers, as it forwards
SIGTERM, so that they checkpoint and stop (:mod:`maskkit.training.preemption`). A signal that
stopped the agent gives exit status 75 (:data:`~maskkit.training.preemption.EXIT_PREEMPTED`).
"""

from __future__ import annotations

import logging
import os
import sys

# torchrun's default set (torch.distributed.elastic.multiprocessing.api), plus SIGUSR1
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from .training.preemption import EXIT_PREEMPTED, STOP_SIGNALS

    # torchrun's --signals-to-handle (whose default it reads from PET_SIGNALS_TO_HANDLE) sets the
    # agent's TORCHELASTIC_SIGNALS_TO_HANDLE; an explicit --signals-to-handle still wins
    os.environ.setdefault("PET_SIGNALS_TO_HANDLE", FORWARDED_SIGNALS)
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", FORWARDED_SIGNALS)  # torch before that option
    for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]:  # its modules' loggers set their own level
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values() if isinstance(f.exitcode, int) and f.exitcode > 0]
        return max(codes) if codes else 1
    except SignalException as exc:  # the workers got the signal and had the shutdown timeout to checkpoint
        return EXIT_PREEMPTED if exc.sigval in STOP_SIGNALS else 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
