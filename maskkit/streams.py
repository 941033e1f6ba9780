"""Standard output and error that survive their reader going away.

``maskkit run ... | head -1``, a ``| tee`` that was killed, an ssh session that closed: the pipe
behind stdout or stderr is closed while the command still has work to do. Python ignores SIGPIPE,
so the next write raises ``BrokenPipeError``; a run would die there, silently (its error message
cannot be written either), at whatever step it had reached. The ``maskkit`` command instead drops
what it writes to a closed stream from then on and goes on: a run trains to its end (its
``metrics.jsonl``, checkpoints and evaluation files hold everything it would have printed) and
exits as it would have. It says so once on the other stream, when that one is still open. To stop
a run, send it a stop signal (docs/cli.md).
"""

from __future__ import annotations

import errno
import os
import sys


class _Survivor:
    """A text stream that forwards to ``stream`` until a write or flush finds its pipe closed, then
    discards everything (file descriptor ``fd`` pointed at ``/dev/null``, so that what child
    processes and C code write there is dropped too)."""

    def __init__(self, stream, name: str) -> None:
        self._stream, self._name, self.closed_pipe = stream, name, False

    def _broken(self) -> None:
        if self.closed_pipe:
            return
        self.closed_pipe = True
        try:
            fd = self._stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        except (OSError, ValueError):
            pass
        other = sys.__stderr__ if self._name == "stdout" else sys.__stdout__
        try:  # on the other stream, when it is still open
            if other is not None and not getattr(_SURVIVORS.get("stderr" if self._name == "stdout" else "stdout"), "closed_pipe", False):
                other.write(f"warning: {self._name} was closed (the reader of its pipe ended); what maskkit writes there is "
                            "dropped from now on and the command goes on (stop it with SIGTERM or Ctrl-C)\n")
                other.flush()
        except OSError:
            pass

    def write(self, text: str) -> int:
        if self.closed_pipe:
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as exc:
            if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EPIPE:
                raise
            self._broken()
            return len(text)

    def flush(self) -> None:
        if self.closed_pipe:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EPIPE:
                raise
            self._broken()

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):  # isatty, fileno, encoding, buffer, ...
        return getattr(self._stream, name)


_SURVIVORS: dict[str, _Survivor] = {}


def survive_closed_streams() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`_Survivor` (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(stream, _Survivor):
            continue
        _SURVIVORS[name] = _Survivor(stream, name)
        setattr(sys, name, _SURVIVORS[name])


def progress_console(console=None):
    """(console, whether a live progress bar may be drawn on it): ``console`` or one on stderr; a
    bar only on a terminal. Piped to a file (a SLURM log, ``2> log``) a live bar leaves its
    carriage-return frames and its last frame behind, so commands print plain lines there instead."""
    from rich.console import Console

    console = console or Console(stderr=True)
    return console, console.is_terminal

