"""Resume under another world size: refused in one line naming both sizes and
the remedy, on every rank, also when the first run was started by torchrun by hand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from maskkit.config import resolve
from maskkit.train import TrainingError, train

from run_helpers import SMALL, env_for

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "maskkit.cli", "run"]


@pytest.mark.slow
def test_a_run_of_two_processes_resumed_by_one_or_the_reverse_is_refused(tmp_path):
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=w"]
    first = subprocess.run([*TORCHRUN, *args, "train.steps=2"], capture_output=True, text=True, env=env_for(), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    with pytest.raises(TrainingError, match=r"step_00000002\.pt was written by 2 processes, this run has 1; .*"
                                             r"resume it with 2 \(runtime.devices=2 or torchrun --nproc_per_node=2\)"):
        train(*resolve([*args, "train.steps=4", "runtime.resume=latest"]))
    # the reverse: 1 process, then resumed on 2 (through runtime.devices): every rank refuses, one line
    one = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=o"]
    train(*resolve([*one, "train.steps=2"]))
    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "run", *one, "train.steps=4", "runtime.resume=latest",
                          "runtime.devices=2"], capture_output=True, text=True, env=env_for(), timeout=600)
    err = [l for l in out.stderr.splitlines() if l.strip() and not l.startswith(("launching", "source "))]  # less the log lines
    assert out.returncode == 2 and len(err) == 1 and "was written by 1 process, this run has 2" in err[0], out.stderr[-3000:]
