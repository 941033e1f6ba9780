"""The run directory: its name, creating or reusing it, and the run's record in it
(``config.json``: the run's id and the resolved config; ``environment.json``: versions, plugins,
each resume)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..config import ExperimentConfig
from ..distributed import DistInfo
from ..errors import MaskkitError, TrainingError, os_error_line
from ..io import atomic_write_text, check_writable_dir
from .run_lock import LOCK_NAME, RunDirLocked, RunLock


def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from .. import __version__

    return f"maskkit {__version__} (not a git checkout)"


def installed_plugins() -> list[dict[str, str]]:
    """The plugins this process loaded (plugin name, distribution, version), and the failed ones."""
    from .. import __version__
    from ..plugins import get_plugin_manager, get_registry

    reg = get_registry()
    out = []
    for name, _ in get_plugin_manager().list_name_plugin():
        dist = name.split(":", 1)[0]
        version = _version_or_none(dist)
        if version is None:  # a built-in module, not a distribution
            dist, version = "maskkit (built-in)", __version__
        out.append({"plugin": name, "distribution": dist, "version": version})
    for dist, why in getattr(reg, "failed_plugins", {}).items():
        out.append({"plugin": dist, "distribution": dist, "version": _version_or_none(dist), "failed": why})
    return out


def _version_or_none(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def resolved_record(cfg: ExperimentConfig, sources: dict[str, str]) -> dict:
    """``config.json``: the config with every strategy tree expanded with its defaults, and sources."""
    from ..compose import to_spec
    from ..masking import STREAMS

    conf = cfg.model_dump(mode="json")
    for t in STREAMS:
        if conf.get(t) is not None:
            conf[t] = to_spec(cfg.strategy(t))  # the tree the config built
    return {"config": conf, "sources": sources}


#: the key of config.json that holds the run's id, which every checkpoint of the run records too
RUN_ID_KEY = "run_id"


def new_run_id() -> str:
    """A new run's id: 16 random hex digits (``secrets``), never derived from the config or the
    directory's name, so two runs with the same settings differ and a copied or moved run
    directory keeps its own."""
    return secrets.token_hex(8)


def read_run_id(out: str | Path) -> str | None:
    """The run id the run directory ``out`` records (``config.json``'s ``run_id``); None when the
    directory has no config.json, one an older maskkit wrote (no id), or one that cannot be read
    (a resume then refuses on its own checks, not on this one)."""
    try:
        rec = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rid = rec.get(RUN_ID_KEY) if isinstance(rec, dict) else None
    return rid if isinstance(rid, str) and rid else None


def default_run_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.preset}-{cfg.scale}-seed{cfg.train.seed}"


def has_content(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides a run's lock file."""
    return folder.is_dir() and any(p.name != LOCK_NAME for p in folder.iterdir())


def _numbered(base: Path) -> list[Path]:
    """``base`` and its numbered siblings ``base-2``, ``base-3``, ... that exist, in number order."""
    pat = re.compile(re.escape(base.name) + r"-(\d+)$")
    found = [(1, base)] if base.exists() else []
    if base.parent.is_dir():
        found += [(int(m.group(1)), p) for p in base.parent.iterdir() if (m := pat.match(p.name)) and int(m.group(1)) >= 2]
    return [p for _, p in sorted(found)]


def run_dir_for(cfg: ExperimentConfig) -> Path:
    """The run directory as things stand (nothing claimed; :func:`claim_run_dir` claims one).
    ``runtime.name`` names it exactly. Without it, a new run gets the first free of
    ``<preset>-<scale>-seed<k>``, ``...-2``, ``...-3`` (as common trainers number runs);
    ``runtime.resume=latest`` continues the highest-numbered one; ``runtime.overwrite`` replaces
    the unnumbered one."""
    return next(_candidates(cfg))


def _candidates(cfg: ExperimentConfig):
    """The directories a run may take, in order of preference: one, or for a new run without
    ``runtime.name`` the numbered names from the first that is free now on (endless)."""
    base = Path(cfg.runtime.out_dir) / (cfg.runtime.name or default_run_name(cfg))
    if cfg.runtime.name or cfg.runtime.overwrite:
        yield base
        return
    existing = [p for p in _numbered(base) if has_content(p)]
    if cfg.runtime.resume is not None:
        yield existing[-1] if existing else base
        return
    if not existing:
        yield base
    n = 2
    while True:
        p = base.parent / f"{base.name}-{n}"
        if not p.exists() or not has_content(p):
            yield p
        n += 1


def _claim_new(cfg: ExperimentConfig) -> tuple[Path, RunLock]:
    """Claim a directory for a new run without ``runtime.name``: the first candidate
    (:func:`_candidates`) that this process creates (``mkdir``, which one process wins) or finds
    empty, and whose lock it takes; one that another run claimed in the meantime (two runs started
    at once with the same settings) is passed over for the next number."""
    for cand in _candidates(cfg):
        try:
            cand.mkdir(parents=True)
        except FileExistsError:
            if not cand.is_dir() or has_content(cand):
                continue
        try:
            lock = RunLock(cand).acquire()
        except RunDirLocked:
            continue  # another run has just claimed it
        if has_content(cand):  # ... and filled it before we locked
            lock.release()
            continue
        return cand, lock
    raise AssertionError("unreachable: the candidates are endless")


def claim_run_dir(cfg: ExperimentConfig, info: DistInfo) -> tuple[Path, RunLock | None]:
    """Choose the run directory (rank 0, then shared with every rank) and lock it; returns it and,
    on rank 0, the :class:`~maskkit.training.run_lock.RunLock` held on it (the caller releases it).

    ``runtime.out_dir`` is checked first (one line naming it when it cannot be written: permission,
    a file in the way, a read-only file system). A new run without ``runtime.name`` claims its
    numbered name atomically (:func:`_claim_new`: two runs started at once get ``<name>`` and
    ``<name>-2``). The lock is taken before anything in the directory is read or deleted
    (``runtime.overwrite``); a refusal (a live holder, an existing directory) is raised on every
    rank alike."""
    out, lock, err = None, None, None
    if info.main:
        try:
            check_writable_dir(cfg.runtime.out_dir, "runtime.out_dir")
            if cfg.runtime.name or cfg.runtime.overwrite or cfg.runtime.resume is not None:
                out = run_dir_for(cfg)
                lock = RunLock(out).acquire()
            else:
                out, lock = _claim_new(cfg)
            exists = has_content(out)
            if exists and not cfg.runtime.resume and not cfg.runtime.overwrite:
                from .checkpointing import run_checkpoints

                if run_checkpoints(out):
                    raise TrainingError(f"{out}: run directory exists; pass runtime.resume=latest to continue it or "
                                        f"runtime.overwrite=true to replace it (or choose another runtime.name)")
                raise TrainingError(f"{out}: run directory exists and holds no checkpoint (an earlier attempt stopped "
                                    f"before its first); pass runtime.resume=auto to start again in it, "
                                    f"runtime.overwrite=true to replace it, or choose another runtime.name")
            if exists and cfg.runtime.overwrite and not cfg.runtime.resume:
                for p in out.iterdir():  # everything but the lock this run holds
                    if p.name == LOCK_NAME:
                        continue
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
        except BaseException as exc:
            if lock is not None:
                lock.release()
            if isinstance(exc, OSError):  # what the check did not foresee (a race, a full disk): one line
                where = out or Path(cfg.runtime.out_dir)
                verb = "write in" if where.is_dir() else "make"  # an existing directory (read-only, another owner's)
                exc = TrainingError(f"runtime.out_dir: cannot {verb} the run directory {where}: {os_error_line(exc)}")
            elif not isinstance(exc, MaskkitError):
                raise
            err = exc
    if info.enabled:
        box = [str(out) if out is not None else None, str(err) if err is not None else None]
        torch.distributed.broadcast_object_list(box, src=0)
        out = Path(box[0]) if box[0] is not None else None
        if box[1] is not None and err is None:
            err = TrainingError(box[1])
    if err is not None:
        raise err
    return out, lock


def prepare_run_dir(cfg: ExperimentConfig, sources: dict[str, str], info: DistInfo, out: Path, run_id: str) -> Path:
    """Prepare the run directory ``out`` (claimed by :func:`claim_run_dir`): its record files (rank 0);
    ``config.json`` records ``run_id`` (the directory's id: a new one for a new run, the one it had
    for a resume, :meth:`maskkit.train.Recipe.setup`)."""
    if not info.main:
        return out
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps({RUN_ID_KEY: run_id, **resolved_record(cfg, sources)}, indent=2))
    env = {"python": sys.version, "platform": platform.platform(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "maskkit_revision": git_revision(), "argv": sys.argv,
           "world_size": info.world, "plugins": installed_plugins(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    env_path = out / "environment.json"
    if cfg.runtime.resume and env_path.is_file():  # keep the run's first record; each resume is added to it
        try:
            first = json.loads(env_path.read_text())
        except (OSError, json.JSONDecodeError):
            first = None
        if isinstance(first, dict):
            env = {**first, "resumes": first.get("resumes", []) + [env]}
    atomic_write_text(env_path, json.dumps(env, indent=2))
    return out
