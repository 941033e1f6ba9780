"""Preemption and requeue: SIGTERM / SIGUSR1 / SIGUSR2 make a run checkpoint at the
step it is in and exit 75, SIGINT the same with exit 130; a stop before step 1 exits 75 in one line
and leaves nothing; a resume logs each step once (metrics.jsonl lines past the resumed step are
dropped), however the run stopped and however it resumes. Real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from maskkit.config import resolve
from maskkit.train import train
from maskkit.training.checkpointing import run_checkpoints
from maskkit.training.metric_logging import MetricLogger
from maskkit.training.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED, STOP_SIGNALS, exit_status

from run_helpers import SMALL, catches, children, cmdline, environ, error_lines, losses, start, steps, wait_for_steps, wait_until


def reference(tmp_path, n):
    """Losses of one uninterrupted run of ``n`` steps (in this process)."""
    r = train(*resolve([*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=ref", f"train.steps={n}"]))
    return {x["step"]: tuple(float("nan") if x.get(k) is None else x[k] for k in ("align_loss", "mim_loss", "mlm_loss"))
            for x in r.losses}


def test_the_stop_signals_and_their_exit_statuses():
    """One tuple, used everywhere: SLURM's SIGTERM and --signal=USR1, submitit's USR2, Ctrl-C."""
    assert set(STOP_SIGNALS) == {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT}
    assert [exit_status(s.name) for s in STOP_SIGNALS] == [75, 75, 75, 130]
    from maskkit.launch import forwarded_signals

    assert set(forwarded_signals().split(",")) >= {s.name for s in STOP_SIGNALS}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT],
                         ids=["SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT"])
def test_a_signal_checkpoints_the_current_step_and_the_resume_logs_each_step_once(tmp_path, sig):
    run = tmp_path / "p"
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=p", "train.ckpt_every=3"]
    proc = start(*args, "train.steps=200")
    wait_for_steps(proc, run, 5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == (EXIT_INTERRUPTED if sig is signal.SIGINT else EXIT_PREEMPTED), err[-3000:]
    stop = steps(run)[-1]
    assert stop >= 5 and steps(run) == list(range(1, stop + 1))
    assert run_checkpoints(run)[-1].name == f"step_{stop:08d}.pt"  # the step it was in, not the last ckpt_every
    line = [l for l in err.splitlines() if "stopped by" in l]
    assert len(line) == 1 and f"stopped by {sig.name} after step {stop} of 200" in line[0] and "runtime.resume=latest" in line[0]
    assert "Traceback" not in err
    if sig is not signal.SIGTERM:
        return
    # the requeued job: the same command, resume=latest (fewer steps so the test stays short)
    end = stop + 2
    r = train(*resolve([*args, f"train.steps={end}", "runtime.resume=latest"]))
    assert [x["step"] for x in r.losses] == list(range(stop + 1, end + 1))
    assert steps(run) == list(range(1, end + 1))
    ref, got = reference(tmp_path, end), losses(run)
    torch.testing.assert_close(torch.tensor([got[s] for s in range(1, end + 1)]), torch.tensor([ref[s] for s in range(1, end + 1)]),
                               equal_nan=True)


def test_a_killed_run_resumed_from_an_older_checkpoint_logs_each_step_once(tmp_path):
    """The issue's input: killed (SIGKILL: no handler runs) after step 5 with a checkpoint at step
    3; resume=latest reads steps 1..8 once each, not 1,2,3,4,5,4,5,6,7,8."""
    run = tmp_path / "k"
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=k", "train.ckpt_every=3"]
    proc = start(*args, "train.steps=200")
    wait_for_steps(proc, run, 5)
    proc.kill()
    proc.communicate(timeout=60)
    logged, ck = steps(run), run_checkpoints(run)[-1]
    last_ck = int(ck.stem.split("_")[1])
    assert len(logged) >= 5 and last_ck % 3 == 0 and last_ck < logged[-1]  # lines past the checkpoint exist
    end = logged[-1] + 2
    train(*resolve([*args, f"train.steps={end}", "runtime.resume=latest"]))
    assert steps(run) == list(range(1, end + 1))


def test_resuming_from_an_explicit_older_checkpoint_drops_the_later_lines_and_checkpoints(tmp_path):
    """resume=<path of step 3> in a directory at step 6: the lines of steps 4-6 go, and so do the
    later checkpoints (renamed *.superseded), so that a later resume=latest does not pick them up."""
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=x", "train.ckpt_every=3", "train.keep_last=5"]
    train(*resolve([*args, "train.steps=6"]))
    run = tmp_path / "x"
    old = run / "checkpoints" / "step_00000003.pt"
    train(*resolve([*args, "train.steps=4", f"runtime.resume={old}"]))
    assert steps(run) == [1, 2, 3, 4]
    assert [p.name for p in run_checkpoints(run)] == ["step_00000003.pt", "step_00000004.pt"]
    assert (run / "checkpoints" / "step_00000006.pt.superseded").is_file()


def test_metric_logger_drops_lines_after_the_resumed_step_and_a_torn_line(tmp_path):
    lines = [json.dumps({"step": s, "loss": s}) for s in (1, 2, 3, 4, 5)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')
    log = MetricLogger(tmp_path, resume_step=3)
    log.write({"step": 4, "samples_per_s": 1.0}, {})
    log.close()
    assert steps(tmp_path) == [1, 2, 3, 4] and log.dropped == 3


def test_tensorboard_purges_the_steps_after_the_resume(tmp_path):
    """Events past the resumed step are purged for every tag, also one that the resumed run does
    not log again (so TensorBoard's own out-of-order clean-up, per tag, would not remove them)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricLogger(tmp_path)
    for s in range(1, 6):
        log.write({"step": s, "samples_per_s": 1.0}, {"mim_loss": float(s)})
    log.close()
    log = MetricLogger(tmp_path, resume_step=3)
    for s in (4, 5):
        log.write({"step": s, "samples_per_s": 1.0}, {"align_loss": 10.0 * s})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss/mim_loss")] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert [(e.step, e.value) for e in acc.Scalars("loss/align_loss")] == [(4, 40.0), (5, 50.0)]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rank1", "launcher"])
def test_under_ddp_every_rank_stops_after_the_same_step(tmp_path, target):
    """Two gloo ranks (``runtime.devices=2``). ``rank1``: SIGTERM to rank 1 only; both ranks stop
    after the same step (agreed through the step's all-reduce). ``launcher``: SIGUSR1 to the
    ``maskkit run`` process, as a user or SLURM sends it; it reaches the workers through
    maskkit.launch's agent. Rank 0 writes that step's checkpoint, the job exits 75 with one line
    and no process is left behind."""
    import os

    run = tmp_path / "d"
    proc = start(*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=d", "train.steps=200", "runtime.devices=2")
    wait_for_steps(proc, run, 3)
    procs = children(proc.pid)
    if target == "rank1":
        rank1 = [p for p in procs if environ(p).get("RANK") == "1"]
        assert rank1, "rank 1's process"
        os.kill(min(rank1), signal.SIGTERM)  # the worker itself, not a DataLoader worker of it (none here)
        said = "stopped by a signal on another rank after step"
    else:
        proc.send_signal(signal.SIGUSR1)
        said = "stopped by SIGUSR1 after step"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    stop = steps(run)[-1]
    assert steps(run) == list(range(1, stop + 1)) and run_checkpoints(run)[-1].name == f"step_{stop:08d}.pt"
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith(("launching", "source "))]  # less the log lines
    assert len(lines) == 1 and said in lines[0], err[-2000:]
    assert not [p for p in procs if os.path.exists(f"/proc/{p}") and environ(p)], "a process of the run is left"


def test_resume_auto_is_one_command_for_the_first_start_and_every_requeue(tmp_path):
    """``runtime.resume=auto``: no run directory -> a new run; a directory whose run died before its
    first checkpoint -> step 0 again in it, its logged lines dropped; a checkpoint -> resumed. The
    same arguments every time (what a requeued SLURM job repeats); ``latest`` refuses the second case."""
    from maskkit.errors import TrainingError

    run = tmp_path / "a"
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=a", "runtime.resume=auto", "train.ckpt_every=3"]
    first = train(*resolve([*args, "train.steps=2"]))  # a first start, cut short before any ckpt_every
    for ck in run_checkpoints(run):  # ... as if killed before its first checkpoint
        ck.unlink()
    assert steps(run) == [1, 2]
    with pytest.raises(TrainingError, match=r"runtime.resume=latest: no checkpoint in"):
        train(*resolve([*args[:-2], "runtime.resume=latest", "train.steps=4"]))
    again = train(*resolve([*args, "train.steps=4"]))
    assert [x["step"] for x in again.losses] == [1, 2, 3, 4] and steps(run) == [1, 2, 3, 4]
    assert [x["align_loss"] for x in again.losses[:2]] == [x["align_loss"] for x in first.losses]  # the same start
    resumed = train(*resolve([*args, "train.steps=5"]))
    assert [x["step"] for x in resumed.losses] == [5] and steps(run) == [1, 2, 3, 4, 5]


# --- a stop before step 1, a second Ctrl-C, the loader workers, the evaluation ------------------

@pytest.mark.parametrize("when,sig", [("start", signal.SIGTERM), ("setup", signal.SIGTERM), ("setup", signal.SIGINT)],
                         ids=["start-SIGTERM", "setup-SIGTERM", "setup-SIGINT"])
def test_a_stop_before_step_1_exits_in_one_line_and_a_requeue_starts_cleanly(tmp_path, when, sig):
    """``start``: as soon as the process handles SIGTERM at all (the CLI's first act, before the
    config is read); ``setup``: once the run directory exists (data and model being built). Either
    way: exit 75 (130 for SIGINT), one line saying nothing was saved, no run directory left; the
    requeued command (runtime.resume=auto) then starts at step 1 in a clean directory."""
    run = tmp_path / "s"
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=s", "runtime.resume=auto"]
    proc = start(*args, "train.steps=200")
    if when == "start":
        wait_until(lambda: catches(proc.pid, signal.SIGTERM), proc, "a SIGTERM handler")
    else:
        wait_until(lambda: (run / "config.json").is_file(), proc, "the run directory")
        assert steps(run) == []
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == exit_status(sig.name), err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and f"stopped by {sig.name} before step 1" in lines[0] and "nothing to save" in lines[0], err[-3000:]
    assert "Traceback" not in err and not run.exists()
    if sig is signal.SIGINT:
        return
    r = train(*resolve([*args, "train.steps=2"]))
    assert [x["step"] for x in r.losses] == [1, 2] and steps(run) == [1, 2] and r.run_dir == run


def test_a_second_sigint_while_the_checkpoint_is_written_stops_at_once(tmp_path, monkeypatch):
    """The first Ctrl-C (during step 3) stops the run after that step; a second one while its
    checkpoint is being written (after the data reached the disk, before the rename) stops at once:
    exit 130, the half-written file removed, the earlier checkpoint intact and loadable. In this
    process, with real signals; AGAIN_AFTER_S=0 so that the second one counts however fast it comes."""
    from maskkit.train import PretrainRecipe
    from maskkit.training import preemption
    from maskkit.training.checkpointing import load_checkpoint
    from maskkit.training.preemption import RunPreempted

    monkeypatch.setattr(preemption, "AGAIN_AFTER_S", 0.0)
    armed = {"on": False}
    real_fsync, real_step = os.fsync, PretrainRecipe.train_step

    def fsync(fd):
        real_fsync(fd)
        if armed["on"]:
            armed["on"] = False
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while the checkpoint is being written

    def step(self):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the first: recorded, read after this step
            armed["on"] = True
        return real_step(self)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(PretrainRecipe, "train_step", step)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunPreempted) as ei:
        train(*resolve([*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=i", "train.ckpt_every=2", "train.steps=50"]))
    run = tmp_path / "i"
    assert ei.value.exit_code == EXIT_INTERRUPTED and not armed["on"]
    assert "stopped at once by a second SIGINT at step 3 of 50" in str(ei.value) and "step_00000002.pt, is intact" in str(ei.value)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002.pt"]  # no step 3, no temporary file
    assert load_checkpoint(run / "checkpoints" / "step_00000002.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before


def test_the_same_sigint_delivered_twice_is_one_stop_and_ignored_signals_stay_ignored():
    """A Ctrl-C reaches a process from the terminal and from a parent that forwards it: within
    AGAIN_AFTER_S it is one stop. A signal ignored at the start (nohup) stays ignored. What a
    nested request (the recipe's) saw, the enclosing one (the CLI's, a sweep's) learns."""
    from maskkit.training.preemption import StopRequest, Stopped

    old = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        outer = StopRequest().install()
        inner = StopRequest().install(deferred=True)
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert inner.names == ["SIGINT", "SIGTERM"] and inner.name == "SIGTERM"  # the scheduler's decides: 75
        inner.restore()
        assert outer.names == ["SIGINT", "SIGTERM"] and outer.requested
        with pytest.raises(Stopped) as ei:
            outer.act_now()
        assert ei.value.exit_code == EXIT_PREEMPTED
        outer.restore()
    finally:
        signal.signal(signal.SIGUSR2, old)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_a_signal_to_every_process_of_the_job_checkpoints_with_loader_workers(tmp_path, sig):
    """SLURM signals every process of a job (and torchrun's agent a worker's whole process group):
    the DataLoader workers get it too. torch ends a worker on any SIGTERM, which failed the run at
    its next batch ("a DataLoader worker process died (killed by SIGTERM)", exit 2, no checkpoint).
    The workers leave the stop signals to the main process: the run checkpoints and exits 75, and
    its workers end with it."""
    run = tmp_path / "w"
    proc = start(*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=w", "train.steps=200", "data.num_workers=2")
    wait_for_steps(proc, run, 3)
    workers = children(proc.pid)
    assert len(workers) >= 2
    os.killpg(proc.pid, sig)  # the whole process group, as a scheduler does
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    stop = steps(run)[-1]
    assert run_checkpoints(run)[-1].name == f"step_{stop:08d}.pt" and "DataLoader worker" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and f"stopped by {sig.name} after step {stop}" in lines[0]
    time.sleep(0.5)
    assert not [p for p in workers if os.path.exists(f"/proc/{p}") and environ(p)], "a loader worker is left"


@pytest.mark.parametrize("when", ["last step", "evaluation", "last step, no evaluation"])
def test_a_stop_at_the_last_step_or_in_the_evaluation_is_evaluated_on_requeue(tmp_path, monkeypatch, when):
    """A signal during the last step: its checkpoint is written and the run exits 75 without the
    end-of-run evaluation; during the evaluation: it stops at once (exit 75), zeroshot.json not
    written. The requeued command (resume=latest) trains nothing more and evaluates. Without an
    evaluation to do, a signal in the last step changes nothing: the run is complete (exit 0)."""
    from maskkit.train import PretrainRecipe
    from maskkit.training.preemption import RunPreempted

    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=e", "data.val_n=16", "train.steps=3",
            f"runtime.evaluations={'[]' if 'no evaluation' in when else '[zeroshot]'}"]
    real_step, real_eval = PretrainRecipe.train_step, PretrainRecipe.evaluate

    def step(self):
        if when.startswith("last step") and self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self)

    def evaluate(self):
        if when == "evaluation":
            os.kill(os.getpid(), signal.SIGTERM)
        return real_eval(self)

    run = tmp_path / "e"
    with monkeypatch.context() as m:
        m.setattr(PretrainRecipe, "train_step", step)
        m.setattr(PretrainRecipe, "evaluate", evaluate)
        if "no evaluation" in when:
            r = train(*resolve(args))
            assert r.step == 3 and steps(run) == [1, 2, 3] and run_checkpoints(run)[-1].name == "step_00000003.pt"
            return
        with pytest.raises(RunPreempted) as ei:
            train(*resolve(args))
    said = "after step 3 of 3" if when == "last step" else "during the end-of-run evaluation"
    assert ei.value.exit_code == EXIT_PREEMPTED and said in str(ei.value) and "runtime.resume=latest" in str(ei.value)
    assert not (run / "zeroshot.json").exists() and run_checkpoints(run)[-1].name == "step_00000003.pt"
    r = train(*resolve([*args, "runtime.resume=latest"]))
    assert r.step == 3 and r.losses == [] and r.zeroshot is not None and (run / "zeroshot.json").is_file()
    assert steps(run) == [1, 2, 3]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun")
    return train(*resolve([*SMALL, f"runtime.out_dir={out}", "runtime.name=r", "data.val_n=16", "train.steps=2"])).run_dir


@pytest.mark.parametrize("command", ["zeroshot", "finetune"])
def test_an_evaluation_stopped_by_sigterm_exits_75_and_writes_no_half_file(tmp_path, small_run, command):
    """``maskkit eval zeroshot/finetune`` stopped by SIGTERM (a scheduler's preemption): exit 75 and
    one line, no result file, no temporary file left, and no split file: new split files are
    written once the evaluation has succeeded (a stopped one writes nothing; the command run again
    draws the same splits). (Without a handler SIGTERM killed it: status -15.)"""
    import sys

    out = tmp_path / "o"
    if command == "zeroshot":
        cmd = ["eval", "zeroshot", str(small_run), "--bootstrap", "100000", "--out", str(out / "zs.json")]
    else:
        cmd = ["eval", "finetune", str(small_run), "--mode", "finetune", "--epochs", "10000", "--out", str(out)]
    import subprocess

    from run_helpers import env_for

    proc = subprocess.Popen([sys.executable, "-m", "maskkit.cli", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env_for(), start_new_session=True)
    wait_until(lambda: catches(proc.pid, signal.SIGTERM), proc, "a SIGTERM handler")
    time.sleep(3)  # into the evaluation (or still loading: the same result)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"error: stopped by SIGTERM before `maskkit eval {command}` finished"), err[-2000:]
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) if out.exists() else []
    assert not [p for p in left if p.endswith(".tmp") or "results" in p or p.endswith("zs.json")], left
    assert not (out / "splits").exists(), left


@pytest.mark.slow
@pytest.mark.parametrize("case", ["setup-SIGTERM", "group-SIGINT"])
def test_under_ddp_a_stop_before_step_1_and_a_ctrl_c_to_the_process_group(tmp_path, case):
    """``runtime.devices=2``. ``setup-SIGTERM``: SIGTERM to the job's process group while the ranks
    build the run (before step 1): exit 75, one line, no run directory, no process left.
    ``group-SIGINT``: Ctrl-C as a terminal sends it, to ``maskkit run`` and the agent at once (and
    ``maskkit run`` passes it on too): the agent passes it to the workers once, so they checkpoint
    the step they are in and exit 130 (torchrun alone cut its grace period short at the second
    delivery and sent the workers SIGTERM)."""
    run = tmp_path / "g"
    proc = start(*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=g", "train.steps=200", "runtime.devices=2")
    if case == "setup-SIGTERM":
        wait_until(lambda: (run / "config.json").is_file(), proc, "the run directory")
        sig = signal.SIGTERM
    else:
        wait_for_steps(proc, run, 3)
        sig = signal.SIGINT
    procs = children(proc.pid)
    os.killpg(proc.pid, sig)
    if case == "group-SIGINT":  # ... and once more to the agent a moment later (a slower forwarder, a scheduler)
        agent = [p for p in procs if "maskkit.launch" in cmdline(p)]
        time.sleep(0.3)
        os.kill(agent[0], sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == exit_status(sig.name), err[-3000:]
    lines = error_lines(err)
    if case == "setup-SIGTERM":
        assert len(lines) == 1 and "stopped by SIGTERM before step 1 of 200: nothing to save" in lines[0], err[-3000:]
        assert not run.exists()
    else:
        stop = steps(run)[-1]
        assert run_checkpoints(run)[-1].name == f"step_{stop:08d}.pt"
        assert len(lines) == 1 and f"stopped by SIGINT after step {stop} of 200" in lines[0], err[-3000:]
    time.sleep(0.5)
    assert not [p for p in procs if os.path.exists(f"/proc/{p}") and environ(p)], "a process of the run is left"


def test_in_process_calls_leave_the_signal_handlers_as_they_found_them(tmp_path, monkeypatch):
    """train(), maskkit.cli.main() and the multi-process launcher's forwarding, called from Python
    (a test suite, a notebook): the process's handlers of SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT are
    the same objects after the call, and a SIGTERM after it reaches the caller's handler (it was
    swallowed by maskkit's leftover handler)."""
    import sys

    from maskkit import cli

    seen = []

    def mine(signum, frame):
        seen.append(signal.Signals(signum).name)

    sigs = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
    old = {s: signal.signal(s, mine) if s != signal.SIGINT else signal.getsignal(s) for s in sigs}
    try:
        before = {s: signal.getsignal(s) for s in sigs}
        train(*resolve([*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=a", "train.steps=2"]))
        assert {s: signal.getsignal(s) for s in sigs} == before
        # the command's entry point called from Python (it installs the CLI's handlers itself)
        monkeypatch.setattr(sys, "argv", ["maskkit", "run", *SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=b", "train.steps=2"])
        cli.main()  # exit status 0: returns
        assert (tmp_path / "b" / "checkpoints").is_dir() and {s: signal.getsignal(s) for s in sigs} == before
        monkeypatch.setattr(sys, "argv", ["maskkit", "run", "train.lr=oops"])  # an error path too
        with pytest.raises(SystemExit):
            cli.main()
        assert {s: signal.getsignal(s) for s in sigs} == before
        assert cli._run_forwarding([sys.executable, "-c", "pass"]) == 0
        assert {s: signal.getsignal(s) for s in sigs} == before
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == ["SIGTERM"]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
