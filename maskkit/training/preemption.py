"""Preemption: SIGTERM / SIGUSR1 make a run checkpoint at the step it is in and exit with
:data:`EXIT_PREEMPTED`, so that a scheduler requeues it and ``runtime.resume=latest`` continues it.

SLURM sends SIGTERM when it preempts a job (after ``GraceTime``) and the signal of
``--signal=USR1@<seconds>`` that long before the time limit; torchrun's agent forwards the signals
it handles to its workers (``python -m maskkit.launch`` adds SIGUSR1 to them). The handler only
records the signal; the training loop reads it after each step, agreed by every rank through the
step's all-reduce (:meth:`~maskkit.train.PretrainRecipe.train_step`), so that all ranks stop
after the same step.
"""

from __future__ import annotations

import signal
import threading

from ..errors import TrainingError

#: Exit status of a run stopped by a signal after saving its checkpoint (``EX_TEMPFAIL`` of
#: ``sysexits.h``: a temporary failure; run the same command again with ``runtime.resume=latest``).
EXIT_PREEMPTED = 75

#: The signals that stop a run at the end of its current step.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class RunPreempted(TrainingError):
    """The run stopped on a signal after saving a checkpoint at its current step; the CLI exits
    with :data:`EXIT_PREEMPTED`."""

    exit_code = EXIT_PREEMPTED


class StopRequest:
    """Records the first of :data:`STOP_SIGNALS` received while installed (main thread only:
    elsewhere, e.g. in a thread of a sweep, nothing is installed and no signal is seen).

    ``name``: the signal's name once one arrived, else ``None``. :meth:`restore` puts back the
    handlers found at :meth:`install` (so a run inside a longer process leaves them as they were).
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.name is None:
            self.name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.name is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
