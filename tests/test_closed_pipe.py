"""A closed stdout / stderr pipe: ``maskkit run ... 2>&1 | head -1``
killed the run silently before step 1 and left a directory that blocked the next run of that name.
The command goes on, dropping what it writes to the closed stream (maskkit.streams; docs/cli.md):
the run trains to its end and exits 0 with everything in its run directory."""

from __future__ import annotations

import subprocess
import sys

from maskkit.training.checkpointing import load_model, run_checkpoints

from run_helpers import SMALL, env_for, steps


def test_a_run_whose_output_pipe_closes_after_one_line_trains_to_its_end(tmp_path):
    run = tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "-m", "maskkit.cli", "run", *SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=p",
                             "train.steps=4", "runtime.progress=true"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_for())
    first = proc.stdout.readline()  # `2>&1 | head -1`: one line read, then the reader is gone
    proc.stdout.close()
    assert proc.wait(timeout=600) == 0, first
    assert first.startswith("source phantoms:")
    assert steps(run) == [1, 2, 3, 4] and [p.name for p in run_checkpoints(run)] == ["step_00000004.pt"]
    load_model(run)


def test_a_closed_stdout_is_said_once_on_stderr_and_the_command_succeeds():
    proc = subprocess.Popen([sys.executable, "-m", "maskkit.cli", "strategies"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for())
    proc.stdout.close()  # `maskkit strategies | true`
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert err.splitlines() == ["warning: stdout was closed (the reader of its pipe ended); what maskkit writes there is dropped "
                                "from now on and the command goes on (stop it with SIGTERM or Ctrl-C)"], err
