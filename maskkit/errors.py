"""maskkit's exceptions: each message is one line naming the file, key or value at fault."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MaskkitError(ValueError):
    """Base of every error maskkit raises on bad input."""


class OutputWriteError(MaskkitError):
    """A file maskkit writes could not be written (disk full, no permission, ...): one line naming
    the file and the cause; what was there before is intact (writes are atomic). ``errno`` is the
    OS error number."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class TextFileError(MaskkitError):
    """A text file maskkit reads (CSV, split, report, config) that cannot be read or is not UTF-8."""


class ContextError(MaskkitError):
    """A MaskContext whose tensors have the wrong shape, dtype or device."""


class MissingInputError(MaskkitError):
    """A strategy was asked to run without an input it requires."""


class CompositionError(MaskkitError):
    """A strategy composition (tree) that does not validate."""


class UnknownNameError(MaskkitError):
    """A strategy or preset name that is not registered."""


class PluginError(MaskkitError):
    """A plugin that registers something inconsistent (e.g. a duplicate name)."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A '; did you mean ...?' suffix listing close matches, or '' when none."""
    hits = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(repr(h) for h in hits)}?" if hits else ""


class TrainingError(MaskkitError):
    """The run cannot go on (NaN losses in a row, a refused checkpoint, a bad run directory)."""


class MaskkitWarning(UserWarning):
    """Something optional did not work and the run goes on without it (a cache that cannot be
    written, ...); the CLI prints it as one line ``warning: <message>``."""
