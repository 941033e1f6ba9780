"""The stop signals are handled from the first milliseconds of the command (a SIGTERM in the first
~150 ms exited 143, the handlers being installed only after typer, rich, pydantic and numpy were
imported). The entry points install them before importing anything
slow; a signal that comes during the imports stops the command in one line (75)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from run_helpers import catches, env_for, error_lines, wait_until

SLOW = ("typer", "rich", "pydantic", "numpy", "torch", "click")


@pytest.mark.parametrize("entry", [["-m", "maskkit.cli"], ["-m", "maskkit"]], ids=["python -m maskkit.cli", "python -m maskkit"])
def test_the_handlers_are_installed_before_anything_slow_is_imported(entry):
    out = subprocess.run([sys.executable, "-X", "importtime", *entry, "--help"], capture_output=True, text=True, env=env_for())
    assert out.returncode == 0, out.stderr[-2000:]
    done = [line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:") and "|" in line]
    first_slow = min(i for i, name in enumerate(done) if name.split(".")[0] in SLOW)
    assert done.index("maskkit.training.preemption") < first_slow, done[:first_slow + 1]


def test_the_maskkit_script_enters_through_the_light_entry_point():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert scripts.strip() == 'maskkit = "maskkit.__main__:main"'


def test_a_signal_during_the_imports_stops_the_command_in_one_line():
    """SIGTERM as soon as the process handles it (typer, rich, ... still being imported): exit 75."""
    proc = subprocess.Popen([sys.executable, "-m", "maskkit", "strategies"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env_for(), start_new_session=True)
    wait_until(lambda: catches(proc.pid, signal.SIGTERM), proc, "a SIGTERM handler", every=0.0005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75 and "Traceback" not in err and out == "", err[-2000:]
    assert error_lines(err) == ["error: stopped by SIGTERM before `maskkit strategies` finished: each file it writes is written whole "
                                "or not at all (atomically), so none is half-written; run the same command again"], err
