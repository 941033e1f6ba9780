"""A sweep stopped by a signal: the runs in progress checkpoint at their step (with
``--jobs 2`` the signal is passed on to each child process), no run starts after it, the sweep
exits 75 (130 for SIGINT) in one line, and the same sweep command then continues: finished runs
kept, stopped ones resumed from their checkpoint, every step logged once. Real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from maskkit.training.checkpointing import run_checkpoints
from maskkit.training.preemption import exit_status

from run_helpers import SMALL, env_for, error_lines, steps, wait_until

STEPS = 20


def sweep(out, jobs: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "maskkit.cli", "sweep", "--presets", "t3_attmim", "--grid",
                             "image_mask.child_ratio=0.5,0.7", "--seeds", "0", "--out", str(out), "--jobs", str(jobs),
                             *SMALL, "data.val_n=16", f"train.steps={STEPS}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(), start_new_session=True)


def runs(out):
    return sorted((out / "runs").glob("*")) if (out / "runs").is_dir() else []


@pytest.mark.parametrize("jobs,sig,target", [
    (1, signal.SIGTERM, "parent"),
    pytest.param(2, signal.SIGUSR2, "parent", marks=pytest.mark.slow),
    pytest.param(2, signal.SIGINT, "group", marks=pytest.mark.slow),
], ids=["jobs1-SIGTERM", "jobs2-SIGUSR2-parent", "jobs2-SIGINT-group"])
def test_a_stopped_sweep_checkpoints_its_runs_and_continues(tmp_path, jobs, sig, target):
    out = tmp_path / "sw"
    proc = sweep(out, jobs)
    started = 1 if jobs == 1 else 2
    wait_until(lambda: len(runs(out)) == started and all(len(steps(r)) >= 3 for r in runs(out)), proc,
               f"{started} run(s) at step 3", every=0.02)
    if target == "group":
        os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C or a scheduler: the sweep and its children at once
    else:
        proc.send_signal(sig)  # the sweep's process only: it passes the signal on
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == exit_status(sig.name), err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"error: sweep {out}: stopped by {sig.name}, 0 of 2 runs done"), err[-3000:]
    assert "run the same sweep command again" in lines[0] and "Traceback" not in err
    assert len(runs(out)) == started  # no run started after the signal
    for r in runs(out):  # each run in progress: the checkpoint of the step it was in
        last = steps(r)[-1]
        assert 3 <= last < STEPS and run_checkpoints(r)[-1].name == f"step_{last:08d}.pt" and not (r / "done.json").exists()
        assert f"{r.name}: stopped by {sig.name} after step {last} of {STEPS}" in lines[0]
    if sig is signal.SIGINT:
        return
    again = sweep(out, jobs)  # the requeued job: the same command
    _, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    assert len(runs(out)) == 2 and all(steps(r) == list(range(1, STEPS + 1)) for r in runs(out))
    assert all(json.loads((r / "done.json").read_text())["steps"] == STEPS for r in runs(out))
    assert err.count("resumed from") == started and (out / "results.md").is_file()


# --- an end-of-run evaluation that fails in a sweep (exit 3, recorded, retried) ------------------

BOOM_PLUGIN = '''
import os
from maskkit import hookimpl
from maskkit.eval.contract import EvalResult


def boom(run, settings):
    """Raises while the file $BOOM_FLAG exists; else one metric."""
    if os.path.exists(os.environ["BOOM_FLAG"]):
        raise RuntimeError("the plugin broke")
    return EvalResult("boom", {"boom/x": 0.5})


@hookimpl
def register_evaluations(register):
    register("boom", boom)
'''


def _install_boom(tmp_path, monkeypatch):
    """A real installed evaluation plugin 'boom' (module + dist-info on sys.path, so the spawned
    children of --jobs 2 load it too); it fails while the returned flag file exists."""
    from maskkit import plugins

    site = tmp_path / "site"
    (site / "maskkit_boom-0.1.dist-info").mkdir(parents=True)
    (site / "maskkit_boom.py").write_text(BOOM_PLUGIN)
    (site / "maskkit_boom-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: maskkit-boom\nVersion: 0.1\n")
    (site / "maskkit_boom-0.1.dist-info" / "entry_points.txt").write_text("[maskkit]\nboom = maskkit_boom\n")
    monkeypatch.syspath_prepend(str(site))
    flag = tmp_path / "boom-fails"
    flag.write_text("")
    monkeypatch.setenv("BOOM_FLAG", str(flag))
    monkeypatch.delenv("MASKKIT_LOAD_PLUGINS", raising=False)
    plugins.reset()
    return flag


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_end_of_run_evaluation_exits_3_is_recorded_and_retried(tmp_path, monkeypatch, jobs):
    """A sweep whose runs' evaluation 'boom' failed exited 0, its done.json silent and results.md
    only 'No run holds a metric matching boom/*'; run again, 'done before, kept': never retried."""
    from rich.console import Console

    from maskkit.errors import EVALUATION_FAILED
    from maskkit.sweep import EvaluationsFailed, SweepSpec, run_sweep

    flag = _install_boom(tmp_path, monkeypatch)
    out = tmp_path / "sw"
    spec = SweepSpec(["t3_attmim"], grid={"image_mask.child_ratio": [0.5, 0.7]} if jobs > 1 else {},
                     args=[*SMALL, "data.val_n=12", "train.steps=1", "runtime.evaluations=[zeroshot,boom]"], metrics=["auc", "boom/*"])
    with pytest.raises(EvaluationsFailed) as e:
        run_sweep(spec, out, jobs=jobs)
    n = 2 if jobs > 1 else 1
    assert e.value.exit_code == EVALUATION_FAILED == 3 and "\n" not in str(e.value)
    assert f"end-of-run evaluations failed in {n} of {n} runs" in str(e.value)
    assert "evaluation 'boom' (from plugin 'maskkit-boom:boom') failed: RuntimeError: the plugin broke" in str(e.value)
    dones = sorted((out / "runs").glob("*/done.json"))
    assert len(dones) == n
    for d in dones:
        row = json.loads(d.read_text())
        assert list(row["failed_evaluations"]) == ["boom"] and "boom/x" not in row and row["auc"] is not None
        assert (d.parent / "zeroshot.json").is_file() and not (d.parent / "boom.json").exists()
    md = (out / "results.md").read_text()
    run = dones[0].parent
    assert f"- `{run.name}`: boom (`maskkit eval boom {run}`): evaluation 'boom'" in md
    # run again, the plugin fixed: the failed evaluation is retried on the saved run, not retrained
    flag.unlink()
    steps_before = {d: json.loads(d.read_text())["steps"] for d in dones}
    ckpts = {d: run_checkpoints(d.parent) for d in dones}
    buf = __import__("io").StringIO()
    rows = run_sweep(spec, out, jobs=jobs, console=Console(file=buf, width=400))
    assert "done before, kept, retrying its failed evaluations (boom)" in buf.getvalue()
    assert [r["boom/x"] for r in rows] == [0.5] * n and not any("failed_evaluations" in r for r in rows)
    for d in dones:
        row = json.loads(d.read_text())
        assert "failed_evaluations" not in row and row["boom/x"] == 0.5 and row["steps"] == steps_before[d]
        assert run_checkpoints(d.parent) == ckpts[d] and (d.parent / "boom.json").is_file()
    md = (out / "results.md").read_text()
    assert "failed" not in md and "| 0.500 |" in md
