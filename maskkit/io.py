"""Atomic file writes: a reader sees the old file or the new one, never half of either; and the one
reader of YAML and JSON text that refuses a key given twice (:func:`load_yaml`, :func:`load_json`)."""

from __future__ import annotations

import contextlib
import json
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import BinaryIO
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Raises :class:`~maskkit.errors.OutputWriteError` (one line: the file and the OS's reason, e.g.
    "No space left on device") when it cannot be written; a previous ``path`` is then unchanged.
    """
    with atomic_open(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary file in the same folder, flushed,
    fsynced and renamed onto ``path`` when the block ends without an error, removed otherwise.

    Lets a large object (a checkpoint: ``torch.save(payload, f)``) stream to disk without a second
    copy in memory. Errors as :func:`atomic_write_bytes`: an ``OSError`` in the block or while
    finishing becomes one-line :class:`~maskkit.errors.OutputWriteError`, also when a writer
    raised another error over it (torch's ``unexpected pos`` over a full disk's ``ENOSPC``); an
    error a writer's clean-up raised over the block's own (a signal's
    :class:`~maskkit.training.preemption.Stopped`, torch's report of a dead DataLoader worker) is
    raised as that one. A previous ``path`` is unchanged whatever happens.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
        tmp = None
    except BaseException as exc:
        from .errors import OutputWriteError, exception_chain

        # the block's real failure may lie under another: torch's zip writer raises "unexpected pos"
        # over the OSError of a full disk, or over whatever a signal handler raised inside its write
        # (a stop signal's Stopped, torch's report of a dead DataLoader worker)
        chain = list(exception_chain(exc))
        stop = next((e for e in chain if not isinstance(e, Exception)), None)  # Stopped, KeyboardInterrupt
        if stop is not None and stop is not exc:
            raise stop from None
        err = next((e for e in chain if isinstance(e, OSError)), None)
        if stop is None and err is not None:
            reason = str(err.strerror or err)
            raise OutputWriteError(f"cannot write {path}: {reason} (any previous version of it is unchanged)",
                                   err.errno, path, reason) from None
        inner = chain[-1]  # the first raised: what the writer's clean-up was raised over
        if stop is None and inner is not exc and isinstance(exc, RuntimeError) and isinstance(inner, Exception):
            raise inner from None
        raise
    finally:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except BaseException:  # a signal handler raised here (a second SIGCHLD, SIGINT): still remove it
                tmp.unlink(missing_ok=True)
                raise


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Check, before any long work, that the folder ``path`` is one or can be made, and that files can
    be created in it (a temporary folder is made and removed in it, or in its nearest existing
    parent: nothing stays). ``what`` names it for the user (``--out``, ``runtime.out_dir``).

    Raises :class:`~maskkit.errors.OutputWriteError` in one line naming ``what``, the path and the
    reason: a file where a folder is needed ("not a folder"), a permission, a read-only file system.
    A file system that fills up later is reported when it does (:func:`atomic_open`)."""
    return _check_writable(Path(path), Path(path), what)


def check_writable_file(path: str | Path, what: str) -> Path:
    """:func:`check_writable_dir` for a file to be written: its folder, and ``path`` must not be a folder."""
    from .errors import OutputWriteError

    p = Path(path)
    try:
        is_dir = p.is_dir()
    except OSError:  # said by the folder's check
        is_dir = False
    if is_dir:
        raise OutputWriteError(f"{what} {p}: is a folder, not a file", errno.EISDIR, p, "is a folder")
    _check_writable(p, p.parent, what)
    return p


def _check_writable(p: Path, folder: Path, what: str) -> Path:
    """:func:`check_writable_dir` of ``folder``, the messages naming ``p`` (the folder or a file in it)."""
    from .errors import OutputWriteError

    def fail(reason: str, errno_: int | None = None):
        return OutputWriteError(f"{what} {p}: {reason}", errno_, p, reason)

    try:
        anc = folder
        while not (anc.exists() or anc.is_symlink()) and anc != anc.parent:
            anc = anc.parent
    except OSError as exc:  # a folder on the way that this user may not enter
        raise fail(f"cannot look into {Path(exc.filename).parent if exc.filename else folder} ({exc.strerror or exc})", exc.errno) from None
    if not anc.is_dir():
        raise fail("is a file, not a folder" if anc == p else f"cannot make it: {anc} is a file, not a folder", errno.ENOTDIR)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".maskkit-write-check-", dir=anc))
    except OSError as exc:
        raise fail(f"cannot write in {'it' if anc == p else anc} ({exc.strerror or exc})", exc.errno) from None
    return p


def _umask_modes(folder: Path) -> None:
    """Give ``folder``, its sub-folders and files the modes ``0o777`` / ``0o666`` less the umask."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Fill a temporary sibling folder, then rename it to ``out``; on any error it is removed and
    an existing ``out`` is left untouched. Without ``overwrite`` an existing ``out`` is an error.
    ``out`` and everything in it get the permissions of a folder / file made under the process's
    umask (``tempfile.mkdtemp`` makes 0700 folders; safetensors writes 0600 files), as
    :func:`atomic_open` gives its files."""
    from .errors import MaskkitError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MaskkitError(f"{out}: is a file, not a folder")
    if out.exists() and not overwrite:
        raise MaskkitError(f"{out}: folder exists; pass --overwrite to replace it")
    check_writable_dir(out.parent, f"{out}: its folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        _umask_modes(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: how maskkit decodes every text file a user gives it (CSV, split and report files, config,
#: composition and sweep files): UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8",
#: Notepad's "UTF-8 with BOM"); the mark is never part of the text. Written files are UTF-8
#: without a mark.
TEXT_ENCODING = "utf-8-sig"


def decode_text(data: bytes, path: str | Path, errors: str = "strict") -> str:
    """``data`` (the bytes of ``path``) as text under :data:`TEXT_ENCODING`.

    Raises :class:`~maskkit.errors.TextFileError` in one line naming the file for UTF-16 text
    (a UTF-16 byte-order mark: Excel's "Unicode text") or bytes that are not UTF-8 (with the
    offset of the first one), unless ``errors="replace"``.
    """
    from .errors import TextFileError

    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise TextFileError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8 "
                            f"(with or without a byte-order mark)")
    try:
        return data.decode(TEXT_ENCODING, errors)
    except UnicodeDecodeError as exc:
        raise TextFileError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                            f"save it as UTF-8 (with or without a byte-order mark)") from None


def read_text(path: str | Path, errors: str = "strict") -> str:
    """The text of a file (gzip-compressed when its name ends in ``.gz``) under
    :data:`TEXT_ENCODING`; a leading byte-order mark is dropped and line ends are kept as they are.

    Raises :class:`~maskkit.errors.TextFileError` in one line naming the file when it cannot be
    read (the OS's reason), is not valid gzip, or is not UTF-8 text (:func:`decode_text`).
    """
    import gzip
    import zlib

    from .errors import TextFileError

    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except OSError as exc:  # gzip.BadGzipFile is an OSError
        raise TextFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (EOFError, zlib.error) as exc:
        raise TextFileError(f"{path}: cannot read (damaged gzip data: {exc})") from None
    return decode_text(data, path, errors)


# --- reading YAML and JSON: a key given twice is an error -----------------------------------

class DuplicateKeyError(ValueError):
    """A mapping of a YAML or JSON text that gives one key twice (``{path: a.csv, path: b.csv}``):
    the key, and (YAML) the 1-based line and column where it is repeated and the line it first
    appeared on. Every reader of maskkit's YAML/JSON (config files, ``key=value`` YAML-flow values,
    sweeps, compositions) refuses it rather than keeping the last value."""

    def __init__(self, key: object, line: int | None = None, column: int | None = None, first: int | None = None):
        self.key, self.line, self.column, self.first = key, line, column, first
        where = f"line {line}: " if line is not None else ""
        was = f" (first on line {first})" if first is not None and first != line else ""
        super().__init__(f"{where}key {str(key)!r} given twice in one mapping{was}; give each key once")


def _unique_key_loader():
    """A ``yaml.SafeLoader`` whose mappings refuse a repeated key (:class:`DuplicateKeyError`);
    the keys a merge (``<<: *base``) brings in may be overridden, as YAML defines."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        hash(key)
                    except TypeError:
                        continue  # the base class says an unhashable key is not allowed
                    mark = key_node.start_mark
                    if key in seen:
                        raise DuplicateKeyError(key, mark.line + 1, mark.column + 1, seen[key])
                    seen[key] = mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_yaml(text: str) -> object:
    """``text`` read as YAML (safe: plain data only) with every mapping's keys unique: a repeated
    key is :class:`DuplicateKeyError` (line, column, key), never "the last one wins". The one YAML
    reader of maskkit (config files, ``key=value`` flow values, sweeps, compositions)."""
    import yaml

    return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader subclass)


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise DuplicateKeyError(k)
        seen[k] = v
    return seen


def load_json(text: str) -> object:
    """``text`` read as JSON with every object's keys unique (:class:`DuplicateKeyError`)."""
    return json.loads(text, object_pairs_hook=_unique_pairs)
