"""The optional entity cache under a read-only HOME: the run goes on without it,
with one warning line naming MASKKIT_CACHE."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from maskkit.data.ner import CachedNER, LexiconNER
from maskkit.errors import MaskkitWarning

from run_helpers import SMALL


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder this process cannot write: a read-only tmpfs as root (who ignores modes), else mode 555."""
    d = tmp_path / "home"
    d.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode:
            pytest.skip("root without a way to make a read-only folder (mount refused)")
        yield d
        subprocess.run(["umount", str(d)], check=True)
    else:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)


def test_a_cache_that_cannot_be_written_warns_and_still_gives_the_entities(readonly_dir):
    ner = CachedNER(LexiconNER(), directory=readonly_dir / "ner")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ents = ner(["Small left pleural effusion."])
        ner.save()
    assert ents[0] and ents == LexiconNER()(["Small left pleural effusion."])
    msgs = [str(w.message) for w in caught if issubclass(w.category, MaskkitWarning)]
    assert len(msgs) == 1 and "MASKKIT_CACHE" in msgs[0] and str(readonly_dir / "ner") in msgs[0]


def test_a_run_with_a_read_only_home_goes_on_with_one_warning_line(tmp_path, readonly_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("MASKKIT_CACHE", "XDG_CACHE_HOME")}
    env.update(HOME=str(readonly_dir), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "run", *SMALL, "train.steps=1", f"runtime.out_dir={tmp_path / 'runs'}",
                          "runtime.name=h"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    warn = [l for l in out.stderr.splitlines() if "MASKKIT_CACHE" in l]
    assert len(warn) == 1 and warn[0].startswith("warning: entity cache: cannot write") and "Traceback" not in out.stderr
    assert (tmp_path / "runs" / "h" / "checkpoints" / "step_00000001.pt").is_file()
