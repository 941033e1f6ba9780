"""The smaller faults a fresh user met: live progress bars in logs that are files, the
stop message of a run started with runtime.resume=auto, a CSV given where a run goes, Pillow's
stream repr in a decode error, clipped column titles of masks.png, `maskkit datasets` showing
`any` for the CSV adapter's path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

from maskkit.config import resolve
from maskkit.data.images import DecodeError, read_image
from maskkit.errors import TrainingError
from maskkit.plugins import get_registry
from maskkit.train import PretrainRecipe, train
from maskkit.training.checkpointing import load_model
from maskkit.training.preemption import RunPreempted
from maskkit.viz import TITLE_LINES, wrap_title

from run_helpers import SMALL, env_for


def _residue(text: str) -> list[str]:
    """Lines of a log that hold a live bar's traces: carriage returns, cursor moves, bar glyphs."""
    return [l for l in text.split("\n") if "\r" in l or "\x1b[" in l or "━" in l]


def test_logs_that_are_files_hold_plain_lines_only(tmp_path):
    """runtime.progress=true (the default of a real run) with stderr and stdout piped, as a SLURM
    log is: no bar frames, a plain `step k/N` line per logged step; phantoms and prepare likewise."""
    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "run", *SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=p",
                          "train.steps=2", "runtime.progress=true"], capture_output=True, text=True, env=env_for())
    assert out.returncode == 0, out.stderr[-2000:]
    assert _residue(out.stderr) == [] and _residue(out.stdout) == [], out.stderr[-2000:]
    assert [l.split(" ", 2)[:2] for l in out.stderr.splitlines() if l.startswith("step ")] == [["step", "1/2"], ["step", "2/2"]]
    ph = subprocess.run([sys.executable, "-m", "maskkit.cli", "phantoms", "--n", "4", "--size", "64", "--out", str(tmp_path / "ph")],
                        capture_output=True, text=True, env=env_for())
    assert ph.returncode == 0 and _residue(ph.stdout + ph.stderr) == [] and ph.stderr == "", ph.stdout + ph.stderr
    pc = subprocess.run([sys.executable, "-m", "maskkit.cli", "prepare", "csv", "-o", f"path={tmp_path / 'ph' / 'phantoms.csv'}",
                         "--size", "32", "--out", str(tmp_path / "pc")], capture_output=True, text=True, env=env_for())
    assert pc.returncode == 0 and _residue(pc.stdout + pc.stderr) == [], pc.stdout + pc.stderr
    assert pc.stderr.splitlines()[-1] == "prepare: 4/4 images, 0 skipped"


@pytest.mark.parametrize("phase,resume", [("training", "auto"), ("evaluation", "auto"), ("evaluation", None)])
def test_the_stop_message_says_what_continues_the_run(tmp_path, monkeypatch, phase, resume):
    """A run started with runtime.resume=auto is continued by the same command; one started without
    by the same command with runtime.resume=latest. The message says which, wherever it stopped
    (a stop after a step without resume: tests/test_preemption.py)."""
    real_step, real_eval = PretrainRecipe.train_step, PretrainRecipe.evaluate

    def step(self):
        if phase == "training" and self.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self)

    def evaluate(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_eval(self)

    monkeypatch.setattr(PretrainRecipe, "train_step", step)
    monkeypatch.setattr(PretrainRecipe, "evaluate", evaluate)
    args = [*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=s", "train.steps=2" if phase == "evaluation" else "train.steps=20",
            *(["data.val_n=8", "runtime.evaluations=[zeroshot]"] if phase == "evaluation" else []),
            *([f"runtime.resume={resume}"] if resume else [])]
    with pytest.raises(RunPreempted) as ei:
        train(*resolve(args))
    said = str(ei.value)
    advice = "run the same command again" if resume == "auto" else "run the same command with runtime.resume=latest"
    if phase == "training":
        assert said.startswith("stopped by SIGTERM after step 2 of 20; saved ") and said.endswith("; " + advice), said
    else:
        assert said.startswith("stopped by SIGTERM during the end-of-run evaluation") and said.endswith(f"; {advice} to evaluate it"), said
    assert ("resume=latest" in said) == (resume is None)


def test_a_file_that_is_no_checkpoint_is_named_as_given(tmp_path):
    csv = tmp_path / "reports.csv"
    csv.write_text("image_path,report\na.png,clear\n")
    with pytest.raises(TrainingError) as ei:
        load_model(csv)
    assert str(ei.value) == (f"{csv} is not a readable maskkit checkpoint: not a torch.save file (it starts as text: a CSV or a "
                             "report?); give a run directory or one of its checkpoints/step_*.pt")  # not "runtime.resume: ..."


def test_decode_errors_name_the_file_not_pillows_stream(tmp_path):
    garbage = tmp_path / "scan.jpg"
    garbage.write_bytes(b"not an image at all")
    Image.new("L", (64, 64), 128).save(tmp_path / "whole.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((tmp_path / "whole.jpg").read_bytes()[:300])
    for path, why in [(garbage, "(not an image format Pillow reads; the file starts with b'not an i')"),
                      (cut, "(OSError: ")]:
        with pytest.raises(DecodeError) as ei:
            read_image(path)
        assert str(ei.value).startswith(f"{path}: cannot decode image {why}") and "BytesIO" not in str(ei.value), ei.value


def test_column_titles_wrap_within_their_column():
    """Pillow's default font, the composite's narrowest columns (a 32 px image: 96 px panels): every
    title whole in at most TITLE_LINES lines, each line within the column; a title too long for
    that many lines ends in an ellipsis."""
    d = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    width = 96 - 4
    titles = ["X-ray (top: scores, bottom: mask)", "report_cross", "prompt_driven", "AttMIM (final)", "random"]
    for t in titles:
        lines = wrap_title(t, width, d.textlength)
        assert 1 <= len(lines) <= TITLE_LINES and all(d.textlength(l) <= width for l in lines), (t, lines)
        assert "".join(lines).replace(" ", "") == t.replace(" ", ""), (t, lines)
    long = wrap_title("a_plugin_strategy_with_a_name_far_too_long_for_three_lines_of_a_narrow_column", width, d.textlength)
    assert len(long) == TITLE_LINES and long[-1].endswith("…") and all(d.textlength(l) <= width for l in long)


def test_every_builtin_dataset_option_has_a_declared_type():
    rows = {(n, o["option"]): o["type"] for n, a in get_registry().datasets.items() if a.source == "maskkit.datasets"
            for o in a.option_rows()}
    assert rows[("csv", "path")] == "str"
    assert [k for k, t in rows.items() if "any" in t.split(" | ")] == []


@pytest.mark.parametrize("raised,code,line", [
    (BrokenPipeError(32, "Broken pipe"), 1, "error: broken pipe (BrokenPipeError at test_cli_small_faults.py:"),
    (KeyboardInterrupt(), 130, "error: interrupted (KeyboardInterrupt at test_cli_small_faults.py:"),
    (EOFError("no more input"), 1, "error: input ended (EOFError at test_cli_small_faults.py:"),
])
def test_no_error_path_of_the_command_exits_without_a_line(monkeypatch, capfd, raised, code, line):
    """click ends a command that hit a closed pipe with exit 1 and no word, and turns a
    KeyboardInterrupt or EOFError into its Abort, which main() ended with exit 1 and no word (a
    fresh user saw 'exit status 1, no output' once): each is now one line naming what and where."""
    import maskkit.config
    from maskkit import cli

    def boom(*a, **k):
        raise raised

    monkeypatch.setattr(maskkit.config, "resolve", boom)
    monkeypatch.setattr(sys, "argv", ["maskkit", "run", "preset=xlip"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert e.value.code == code and len(lines) == 1 and lines[0].startswith(line), err


def test_the_error_line_survives_a_console_that_cannot_print(monkeypatch, capfd):
    """Under load a non-blocking stderr pipe that is full makes rich's print raise BlockingIOError:
    the error line then went with it (exit 2 and no output). It is written to fd 2 instead."""
    from maskkit import cli

    def full(*a, **k):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(cli.err_console, "print", full)
    monkeypatch.setattr(sys, "argv", ["maskkit", "run", "train.lr=oops"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capfd.readouterr().err
    assert e.value.code == 2 and err.startswith("error: train.lr: ") and err.count("\n") == 1, err
