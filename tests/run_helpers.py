"""Helpers for tests that drive real ``maskkit run`` processes: start one, wait for its logged
steps, find its worker processes, read its metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# the tiny settings of tests/test_run.py, with a schedule that does not depend on train.steps (so
# that a run resumed with more steps can be compared with one run of those steps)
SMALL = ["data.n=24", "data.val_n=0", "train.batch_size=4", "train.log_every=1", "train.ckpt_every=1000",
         "train.warmup_steps=2", "runtime.progress=false", "runtime.evaluations=[]", "train.schedule=constant",
         "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1", "model.mim.decoder_heads=2"]


#: runs each argv through the command's entry point (maskkit.cli.main: its one-line errors and exit
#: status) in one interpreter: the imports are paid once, not once per command
MAIN_EACH = r"""
import contextlib, io, json, sys
from maskkit.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["maskkit", *argv]
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def run_main_each(argvs: list[list[str]], prefix: tuple[str, ...] = (), **kw) -> list[tuple[int, str]]:
    """(exit status, stderr) of ``maskkit ARGV`` for each of ``argvs``, in one fresh process
    (``prefix``: a command to run it under, e.g. setpriv; ``kw``: subprocess.run's cwd, env)."""
    p = subprocess.run([*prefix, sys.executable, "-c", MAIN_EACH, json.dumps(argvs)], capture_output=True, text=True, **kw)
    assert p.returncode == 0, p.stderr[-3000:]
    return [tuple(r) for r in json.loads(p.stdout.splitlines()[-1])]


def env_for(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def start(*args, env=None, cli=("-m", "maskkit.cli")) -> subprocess.Popen:
    """``maskkit run <args>`` in a new process (its own session, so a signal reaches it alone)."""
    return subprocess.Popen([sys.executable, *cli, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env or env_for(), start_new_session=True)


def steps(run: Path) -> list[int]:
    f = Path(run) / "metrics.jsonl"
    if not f.is_file():
        return []
    return [json.loads(l)["step"] for l in f.read_text().splitlines() if l.strip()]


def losses(run: Path) -> dict[int, tuple[float, ...]]:
    """Each logged step's (align, mim, mlm) loss; null (no target at that step) is NaN."""
    f = Path(run) / "metrics.jsonl"
    return {m["step"]: tuple(float("nan") if m.get(k) is None else m[k] for k in ("align_loss", "mim_loss", "mlm_loss"))
            for m in map(json.loads, f.read_text().splitlines())}


def wait_for_steps(proc: subprocess.Popen, run: Path, n: int, timeout: float = 300) -> None:
    """Until ``run`` has logged ``n`` steps (the process must still be running)."""
    end = time.monotonic() + timeout
    while len(steps(run)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before step {n}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no step {n} within {timeout} s")
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (its /proc SigCgt mask)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    except OSError:
        pass
    return False


def wait_until(pred, proc: subprocess.Popen, what: str, timeout: float = 300, every: float = 0.005) -> None:
    """Until ``pred()`` holds (``proc`` must still be running)."""
    end = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"not {what} within {timeout} s")
        time.sleep(every)


def error_lines(err: str) -> list[str]:
    """The ``error:`` lines of a command's stderr."""
    return [line for line in err.splitlines() if line.startswith("error:")]
