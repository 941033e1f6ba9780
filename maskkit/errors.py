"""maskkit's exceptions: each message is one line naming the file, key or value at fault."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MaskkitError(ValueError):
    """Base of every error maskkit raises on bad input."""


#: the exit status of ``maskkit run`` (and ``maskkit sweep``) when training finished and was saved
#: but an end-of-run evaluation (``runtime.evaluations``) failed (docs/assumptions.md A68)
EVALUATION_FAILED = 3


class OutputWriteError(MaskkitError):
    """A file maskkit writes could not be written (disk full, no permission, ...): one line naming
    the file and the cause; what was there before is intact (writes are atomic). ``errno`` is the
    OS error number, ``path`` the file, ``reason`` the OS's words ("No space left on device")."""

    def __init__(self, message: str, errno: int | None = None, path=None, reason: str | None = None) -> None:
        super().__init__(message)
        self.errno, self.path, self.reason = errno, path, reason


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


class SettingValueError(MaskkitError):
    """A setting's value that only the data can refuse (a label the data lacks), raised by library
    code after the settings validated: ``setting`` (the parameter / settings field), ``value``,
    ``reason``. Its text names the parameter (``absence_ignore='Foo': ...``); ``maskkit eval``
    names the command option instead (``--absence-ignore Foo: ...``, :meth:`as_option`)."""

    def __init__(self, setting: str, value, reason: str) -> None:
        super().__init__(f"{setting}={value!r}: {reason}")
        self.setting, self.value, self.reason = setting, value, reason

    def as_option(self, flag: str) -> MaskkitError:
        """The same error naming command option ``--flag``."""
        return MaskkitError(f"--{flag} {self.value}: {self.reason}")


class PluginError(MaskkitError):
    """A plugin that registers something inconsistent (e.g. a duplicate name)."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A '; did you mean ...?' suffix listing close matches, or '' when none."""
    hits = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(repr(h) for h in hits)}?" if hits else ""


class TrainingError(MaskkitError):
    """The run cannot go on (NaN losses in a row, a refused checkpoint, a bad run directory)."""


def first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of an error text another library wrote (its first line, up to the first
    ". "), never cut inside a word: longer than ``limit`` characters, it ends at a word with "...".
    For quoting a library's error inside maskkit's one-line messages."""
    line = (text.strip().splitlines() or [""])[0]
    head, dot, _ = line.partition(". ")
    line = head if dot else line.rstrip(". ")
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0] + " ..."
    return line


def exception_chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or while handling, outermost first, as
    Python's traceback shows them: ``__cause__``, else ``__context__`` unless suppressed (``raise
    ... from None``, which maskkit uses where its one-line error replaces the other). The root cause
    of a failure is often inside: torch's checkpoint writer reports ``unexpected pos`` over the
    ``OSError`` of a full disk, or over the ``RuntimeError`` with which torch reports a dead
    DataLoader worker."""
    seen: set[int] = set()
    e = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)


def find_in_chain(exc: BaseException, kind: type | tuple[type, ...]):
    """The first exception of ``kind`` in :func:`exception_chain` of ``exc``, or None."""
    return next((e for e in exception_chain(exc) if isinstance(e, kind)), None)


def os_error_line(exc: OSError) -> str:
    """One line for an ``OSError``: the file(s) it names and the OS's reason, e.g.
    ``runs/x/metrics.jsonl: No space left on device (ENOSPC)``."""
    import errno as _errno

    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    code = _errno.errorcode.get(exc.errno, "") if exc.errno else ""
    why = (exc.strerror or str(exc)) + (f" ({code})" if code else "")
    return f"{where}: {why}" if where else why


class MaskkitWarning(UserWarning):
    """Something optional did not work and the run goes on without it (a cache that cannot be
    written, ...); the CLI prints it as one line ``warning: <message>``."""


class LabelCoverageWarning(UserWarning):
    """A label whose known samples hold a single class (its AUC / F1 are undefined;
    :func:`maskkit.eval.labels.label_coverage`). The CLI prints these under its tables, once."""


def weights_only_refusal(exc: BaseException) -> str | None:
    """When ``exc`` is ``torch.load(..., weights_only=True)`` refusing a pickle that needs code
    (a class or function, not only tensors and containers), the short reason, e.g.
    ``"it needs 'argparse.Namespace'"``; None for any other error (bytes that are no pickle at all
    are a file that cannot be read, said otherwise). (torch's own message is several
    paragraphs on how to load it unsafely.)"""
    import re

    text = str(exc)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) if "Weights only load failed" in text else None
    return f"it needs '{m.group(1)}'" if m else None  # other refusals (an unknown operand: not a pickle) are not this


def weights_only_line(path, what: str, reason: str) -> str:
    """The one line for a file :func:`weights_only_refusal` refused (``reason``, its result):
    ``path`` is not a plain ``what`` (a state dict, a maskkit checkpoint) and what to do."""
    return (f"{path} is not a plain {what}: a weights_only load refused it ({reason}: a pickled object, not only "
            f"tensors); maskkit does not run a file's code. Re-save it from trusted code as tensors only "
            f"(torch.save(model.state_dict(), PATH) or safetensors' save_file)")
