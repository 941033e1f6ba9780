"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Raises :class:`~maskkit.errors.OutputWriteError` (one line: the file and the OS's reason, e.g.
    "No space left on device") when it cannot be written; a previous ``path`` is then unchanged.
    """
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as exc:
        from .errors import OutputWriteError

        raise OutputWriteError(f"cannot write {path}: {exc.strerror or exc} (any previous version of it is unchanged)",
                               exc.errno) from None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Fill a temporary sibling folder, then rename it to ``out``; on any error it is removed and
    an existing ``out`` is left untouched. Without ``overwrite`` an existing ``out`` is an error."""
    from .errors import MaskkitError

    out = Path(out)
    if out.exists() and not overwrite:
        raise MaskkitError(f"{out}: folder exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
