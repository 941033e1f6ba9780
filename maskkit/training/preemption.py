"""Stopping on a signal: a run checkpoints at the step it is in and exits with a status that says
what to do next; every other command stops at once, leaving no half-written file.

The stop signals, all in :data:`STOP_SIGNALS` (the one list every part of maskkit uses: the
recipe, the CLI, the ``runtime.devices=N`` parent, :mod:`maskkit.launch`'s agent, the sweep and
its child processes, the DataLoader workers):

- **SIGTERM**: what SLURM sends when it preempts or cancels a job, what torchrun's agent forwards;
- **SIGUSR1**: SLURM's ``--signal=USR1@<seconds>`` before the time limit (Lightning's default);
- **SIGUSR2**: submitit's default warning signal (``SUBMITIT_PREEMPT_SIGNAL``; USR1 is left to NCCL);
- **SIGINT**: Ctrl-C. A user's interrupt, not a scheduler's: the run saves like the others but
  exits :data:`EXIT_INTERRUPTED` (130), so that a requeue script does not requeue it; a second
  Ctrl-C at least :data:`AGAIN_AFTER_S` seconds after the first stops at once (the checkpoint
  being written is abandoned whole; the earlier ones are intact).

The others exit :data:`EXIT_PREEMPTED` (75): run the same command again (``runtime.resume=auto``
or ``latest``). A signal whose disposition is "ignore" when maskkit starts (``nohup``, a background
job of a script ignores SIGINT) stays ignored.

:class:`StopRequest` is the handler. Inside a training step it only records the signal
(*deferred*): the loop reads it after the step, agreed by every rank through the step's all-reduce
(:meth:`~maskkit.train.PretrainRecipe.train_step`), so that all ranks stop after the same step and
no checkpoint is written from inside a handler. Everywhere else (config resolution, data and model
building, evaluation, a command other than ``run``) it raises :class:`Stopped` at once: the work
there is either redone on the next start or written atomically.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

from ..errors import TrainingError

#: Exit status of a run stopped by a scheduler's signal (``EX_TEMPFAIL`` of ``sysexits.h``: a
#: temporary failure; run the same command again, with ``runtime.resume=auto`` or ``latest``).
EXIT_PREEMPTED = 75
#: Exit status of a run stopped by SIGINT (Ctrl-C): 128 + 2, as a shell reports an interrupt.
EXIT_INTERRUPTED = 130

#: Every signal that stops maskkit gracefully (see the module's text). One list, used everywhere.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
#: The one of them that is a user's interrupt (exit 130) rather than a scheduler's (exit 75).
INTERRUPT = signal.SIGINT

#: A second SIGINT this many seconds or more after the first stop signal stops at once. Sooner, it
#: is the same Ctrl-C delivered twice (by the terminal to every process of the job and by a parent
#: that forwards it: ``runtime.devices=N``, ``maskkit.launch``, a sweep).
AGAIN_AFTER_S = 1.0


def exit_status(name: str | None) -> int:
    """The exit status of a stop by the signal called ``name`` (``"SIGTERM"``...)."""
    return EXIT_INTERRUPTED if name == INTERRUPT.name else EXIT_PREEMPTED


def forwarded_signal(name: str | None) -> signal.Signals:
    """The signal a parent passes on to its children for a stop by ``name``."""
    return signal.Signals[name] if name in {s.name for s in STOP_SIGNALS} else signal.SIGTERM


class Stopped(BaseException):
    """Raised by :class:`StopRequest`'s handler where the work may stop at once (not inside a
    training step). A ``BaseException``, as ``KeyboardInterrupt`` is, so that no ``except
    Exception`` on the way turns it into another error. ``name``: the signal that decides the exit
    status (a scheduler's over SIGINT); ``again``: a second SIGINT stopped it at once."""

    def __init__(self, name: str, again: bool = False) -> None:
        super().__init__(name, again)
        self.name, self.again = name, again

    @property
    def exit_code(self) -> int:
        return exit_status(self.name)

    def __str__(self) -> str:
        return f"stopped by {self.name}" + (" (a second SIGINT: at once)" if self.again else "")


class RunPreempted(TrainingError):
    """A run (or a sweep) stopped on a signal; the message says what was saved. The CLI exits with
    ``exit_code``: :data:`EXIT_PREEMPTED`, or :data:`EXIT_INTERRUPTED` for SIGINT."""

    def __init__(self, message: str, signal_name: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = exit_status(signal_name)
        self.detail = detail or message  # what happened, without the advice (a sweep gives its own)

    def __reduce__(self):  # across a sweep's process pool
        return type(self), (str(self), self.signal_name, self.detail)


class StopRequest:
    """The handler of :data:`STOP_SIGNALS` while installed (main thread only: elsewhere nothing is
    installed and no signal is seen).

    Deferred (:meth:`deferring`, or ``install(deferred=True)``) it records the signals; otherwise
    the first one raises :class:`Stopped`. :meth:`act_now` leaves the deferred mode, raising if a
    signal came meanwhile. A SIGINT :data:`AGAIN_AFTER_S` or more after the first signal raises
    ``Stopped(again=True)`` in either mode. :meth:`restore` puts back the handlers found at
    :meth:`install` and tells an enclosing ``StopRequest`` (the CLI's, a sweep's) what it saw.
    """

    def __init__(self) -> None:
        self.names: list[str] = []        # the signals received, in order, each once
        self.first_at: float | None = None
        self.deferred = False
        self._raised = False
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str | None:
        """The signal that decides the exit status: the first scheduler's signal, else SIGINT."""
        return next((n for n in self.names if n != INTERRUPT.name), self.names[0] if self.names else None)

    @property
    def requested(self) -> bool:
        return bool(self.names)

    @property
    def interrupt_only(self) -> bool:
        """Whether every signal received was SIGINT (exit 130, not a requeue)."""
        return self.requested and self.name == INTERRUPT.name

    def install(self, deferred: bool = False) -> StopRequest:
        self.deferred = deferred
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is signal.SIG_IGN:  # nohup, a script's background job: keep ignoring it
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __enter__(self) -> StopRequest:
        """``with StopRequest().install() as stop:``: the handlers found at :meth:`install` are
        put back when the block ends, however it ends (a call in a Python process, a test, leaves the
        process's handlers as it found them)."""
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def note(self, name: str) -> None:
        """Record a stop by ``name`` without raising (a signal seen by a nested handler or a child)."""
        if name not in self.names:
            self.names.append(name)
        if self.first_at is None:
            self.first_at = time.monotonic()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == INTERRUPT.name and self.first_at is not None and time.monotonic() - self.first_at >= AGAIN_AFTER_S:
            self.note(name)
            self._raised = True
            raise Stopped(self.name, again=True)
        self.note(name)
        if not self.deferred and not self._raised:
            self._raised = True
            raise Stopped(self.name)

    @contextlib.contextmanager
    def deferring(self) -> Iterator[StopRequest]:
        """Record signals only, inside the block (bookkeeping that must not be cut in two); leaving
        it for the immediate mode raises :class:`Stopped` if a signal came meanwhile."""
        before, self.deferred = self.deferred, True
        try:
            yield self
        finally:
            self.deferred = before
        if not before:
            self.act_now()

    def act_now(self) -> None:
        """Leave the deferred mode; raise :class:`Stopped` if a signal came while deferred."""
        self.deferred = False
        if self.names and not self._raised:
            self._raised = True
            raise Stopped(self.name)

    def acknowledge(self) -> None:
        """The caller acts on the signals recorded so far itself: :meth:`act_now` (and leaving
        :meth:`deferring`) will not raise for them."""
        self._raised = True

    def restore(self) -> None:
        outer = set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, StopRequest) and owner is not self:
                outer.add(owner)
        self._previous.clear()
        for o in outer:  # the enclosing request (the CLI's, a sweep's) knows the process was asked to stop
            for n in self.names:
                o.note(n)


_CLI_REQUEST: StopRequest | None = None


def cli_stop_request() -> StopRequest:
    """The ``maskkit`` command's :class:`StopRequest`, installed once per process.

    The command's entry point installs it before anything else is imported (``maskkit.__main__``
    for the ``maskkit`` script and ``python -m maskkit``, the first lines of :mod:`maskkit.cli` for
    ``python -m maskkit.cli``), so that a stop signal from the first milliseconds of the process on
    (``import maskkit`` and this module import nothing slow: no torch, typer, rich, pydantic) stops
    the command cleanly instead of killing it (exit 143). A signal that arrives before it, during
    the interpreter's own start, still kills the process: no Python code runs then.

    It starts deferred (a signal during the imports is recorded, not raised inside an import);
    :func:`maskkit.cli.main` calls :meth:`StopRequest.act_now` once it can report a stop."""
    global _CLI_REQUEST
    if _CLI_REQUEST is None:
        _CLI_REQUEST = StopRequest().install(deferred=True)
    return _CLI_REQUEST


def release_cli_stop_request() -> None:
    """Put back the handlers :func:`cli_stop_request` replaced, and forget it: :func:`maskkit.cli.main`
    calls it when it returns, so that ``main()`` called from Python (a test, a notebook, a script
    that runs several commands) leaves the process's signal handlers as it found them, and a next
    ``main()`` starts with a fresh request."""
    global _CLI_REQUEST
    if _CLI_REQUEST is not None:
        _CLI_REQUEST.restore()
        _CLI_REQUEST = None


def shield_loader_worker() -> None:
    """In a DataLoader worker process: leave the stop signals to the main process.

    A scheduler signals every process of a job (SLURM, ``scancel``), torchrun's agent and the
    terminal a whole process group: the DataLoader workers too. torch ends a worker on any SIGTERM,
    and the main process then fails at its next batch ("DataLoader worker ... killed by signal:
    Terminated") before it can checkpoint. Here SIGINT/SIGUSR1/SIGUSR2 are ignored, and SIGTERM ends
    the worker only when the main process sent it (as torch's own handler does then: exit 0); from
    anyone else it is ignored. Workers still end with the main process (torch's watchdog). The
    workers are started with the stop signals blocked (:func:`stop_signals_blocked`), so one that
    comes before this runs waits for it."""
    for sig in STOP_SIGNALS:
        if sig != signal.SIGTERM:
            signal.signal(sig, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # macOS: torch's SIGTERM handler stays
        unblock_stop_signals()
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait, name="maskkit-sigterm", daemon=True).start()
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {s for s in STOP_SIGNALS if s != signal.SIGTERM})


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block :data:`STOP_SIGNALS` in this thread inside the block (they stay pending, delivered at its
    end). Child processes started inside inherit the block, so a signal that reaches them before they
    install their handlers waits for those handlers instead of killing them."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def unblock_stop_signals() -> None:
    """Unblock :data:`STOP_SIGNALS` in this thread (a child started under :func:`stop_signals_blocked`,
    once its handlers are installed)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
