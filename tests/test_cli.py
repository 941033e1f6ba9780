"""The command line: run as a user runs it (a subprocess) where the one-line error and the exit
status of the ``maskkit`` process are the point, in process (typer's CliRunner) where only a
command's output is."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

from run_helpers import run_main_each


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "maskkit.cli", *args], capture_output=True, text=True, env=env)


def invoke(*args):
    """A command run in this process: its exit status, stdout and (for a failure) the exception."""
    from typer.testing import CliRunner

    from maskkit.cli import app

    res = CliRunner().invoke(app, list(args))
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=repr(res.exception))


def test_strategies_json_lists_builtins_with_sources():
    out = invoke("strategies", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["report_cross"]["inputs"] == "image_tokens, report_tokens"
    assert rows["report_cross"]["source"] == "maskkit.strategies"
    assert rows["random"]["modality"] == "image|text"


def test_strategies_table():
    out = invoke("strategies", "image*")
    assert out.returncode == 0 and "image_self" in out.stdout and "report_cross" not in out.stdout


def test_compose_resolves_preset():
    out = invoke("compose", "xlip")
    assert out.returncode == 0, out.stderr
    assert '"child_ratio": 0.7' in out.stdout and "requires=image_tokens, prompt_tokens, report_tokens" in out.stdout


def test_bad_input_is_one_line_without_traceback():
    out = run("compose", '{"union": {"of": ["image_self", {"image_self": {"ratio": 1.5}}]}}')
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "inline.union.of[1].image_self.ratio" in out.stderr
    out = run("compose", "xlpi")
    assert out.returncode == 2 and "unknown preset 'xlpi'; did you mean 'xlip'" in out.stderr


def test_debug_shows_traceback():
    out = run("--debug", "compose", "xlpi")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_check_command():
    out = run("check", "union")
    assert out.returncode == 2 and "Field required" in out.stderr
    out = invoke("check", '{"union": {"of": ["image_self", "prompt_driven"]}}')
    assert out.returncode == 0 and "passes" in out.stdout


def test_option_range_errors_are_usage_errors_not_tracebacks(tmp_path):
    """typer vendors its own click: its BadParameter must print one error line, not a traceback."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "phantoms", "--n", "0", "--out", str(tmp_path / "p")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == "error: --n 0: expected an integer in [1, 10000000] (number of phantoms)", out.stderr


# every numeric option of the eval / finetune / sweep / visualize / data commands: checked before any work
# (no checkpoint is read: the path need not exist), one line naming the option and its range
OPTION_CASES = [
    (["eval", "finetune", "RUN", "--lr", "1e38"],  # the value as typed (an evaluation's settings read the text)
     "--lr 1e38: expected a finite number in (0, 1] (learning rate of the head's AdamW, and of the encoder's with mode finetune)"),
    (["eval", "finetune", "RUN", "--lr", "-1"], "--lr -1: expected a finite number in (0, 1]"),
    (["eval", "finetune", "RUN", "--lr", "nan"], "--lr nan: expected a finite number in (0, 1]"),
    (["eval", "finetune", "RUN", "--lr", "inf"], "--lr inf: expected a finite number in (0, 1]"),
    (["eval", "finetune", "RUN", "--epochs", "0"], "--epochs 0: expected an integer in [1, 10000] (passes over each training split)"),
    (["eval", "finetune", "RUN", "--epochs", "100000000000000000000"], "--epochs 100000000000000000000: expected an integer in [1, 10000]"),
    (["eval", "finetune", "RUN", "--batch-size", "-4"], "--batch-size -4: expected an integer in [1, 65536]"),
    (["eval", "finetune", "RUN", "--seed", "-1"], "--seed -1: expected an integer in [0, 2**32) (split and training seed)"),
    (["eval", "finetune", "RUN", "--mode", "linear"], "--mode linear: expected one of probe, finetune"),
    (["eval", "zeroshot", "RUN", "--bootstrap", "-5"], "--bootstrap -5: expected an integer in [0, 100000]"),
    (["eval", "masks", "RUN", "--n", "0"], "--n 0: expected an integer in [1, 100000] (held-out phantoms)"),
    (["eval", "masks", "RUN", "--seeds", "0"], "--seeds 0: expected an integer in [1, 1000]"),
    (["eval", "masks", "RUN", "--ratio", "1.5"], "--ratio 1.5: expected finite numbers in (0, 1) (final mask ratio, repeatable"),
    (["eval", "masks", "RUN", "--lesion-threshold", "nan"], "--lesion-threshold nan: expected a finite number in (0, 1]"),
    (["sweep", "--presets", "clip", "--jobs", "0"], "--jobs 0: expected an integer in [1, 256] (runs at once)"),
    (["sweep", "--presets", "clip", "--align-steps", "0"], "--align-steps 0: expected an integer in [1, 1000000000]"),
    (["sweep", "--presets", "clip", "--seeds", "1,-2"], "--seeds 1,-2: expected integers in [0, 2**32) (train.seed of the runs)"),
    (["sweep", "--presets", "clip", "--seeds", "1,a"], "--seeds 1,a: expected comma-separated integers in [0, 2**32)"),
    (["sweep", "--presets", "clip", "--grid", "train.lr=1e38,1e-4"],
     "train.lr: Input should be less than or equal to 1 (got 1e+38); expected a finite number in (0, 1]"),
    (["visualize", "masks", "RUN", "--step", "0"], "--step 0: expected an integer in [1, inf)"),
    (["visualize", "masks", "RUN", "--micro", "-1"], "--micro -1: expected an integer in [0, inf)"),
    (["visualize", "text", "RUN", "--n", "0"], "--n 0: expected an integer in [1, 1024] (samples drawn)"),
    (["phantoms", "--n", "4", "--size", "8", "--out", "P"], "--size 8: expected an integer in [32, 4096] (image side in pixels)"),
    (["prepare", "phantoms", "--size", "0", "--out", "C"], "--size 0: expected an integer in [16, 4096]"),
    (["check", "random", "--b", "0"], "--b 0: expected an integer in [1, 4096] (batch size B of the test contexts)"),
    (["run", "train.seed=-1"], "train.seed: Input should be greater than or equal to 0 (got -1); expected an integer in [0, 2**32)"),
    (["run", "train.weight_decay=1e38"], "train.weight_decay: Input should be less than or equal to 1 (got 1e+38); expected a finite number in [0, 1]"),
]


def test_numeric_options_out_of_range_are_one_line(tmp_path):
    """The fresh user's input (`eval finetune RUN --lr 1e38`: an AdamW traceback) and every option of
    the same kind: exit 2, one line `error: <option> <value>: expected <range> (<what it is>)`, nothing
    written."""
    cases = []
    for args, message in OPTION_CASES:
        args = [str(tmp_path / a) if a in ("RUN", "P", "C") else a for a in args]
        cases.append((args + [f"runtime.out_dir={tmp_path / 'runs'}"] if args[0] == "run" else args, message))
    bad = []
    for (args, message), (code, err) in zip(cases, run_main_each([a for a, _ in cases])):
        err = err.strip()
        if not (code == 2 and err.count("\n") == 0 and err.startswith("error: " + message)):
            bad.append((args, code, err[-500:]))
    assert not bad, bad
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_library_functions_check_the_same_ranges(tmp_path):
    """What the commands call checks the same models (a script or a sweep's probe gets the same
    line, naming the argument), and the run settings name their key and range."""
    import pytest

    from maskkit.config import resolve
    from maskkit.errors import MaskkitError
    from maskkit.eval.finetune import run_finetune
    from maskkit.eval.zeroshot import zeroshot_eval
    from maskkit.sweep import load_sweep

    with pytest.raises(MaskkitError, match=r"^lr=1e\+38: expected a finite number in \(0, 1\] \(learning rate"):
        run_finetune(None, None, [], {}, lr=1e38)
    with pytest.raises(MaskkitError, match=r"^batch_size=0: expected an integer in \[1, 65536\]"):
        run_finetune(None, None, [], {}, batch_size=0)
    with pytest.raises(MaskkitError, match=r"^n_boot=-1: expected an integer in \[0, 100000\]"):
        zeroshot_eval(None, None, [], n_boot=-1)
    f = tmp_path / "s.yaml"
    f.write_text("presets: [clip]\nalign_steps: 0\n")
    with pytest.raises(MaskkitError, match=rf"^{f}: align_steps=0: expected an integer in \[1, 1000000000\]"):
        load_sweep(str(f))
    f.write_text("presets: [clip]\nseeds: [0, -1]\n")
    with pytest.raises(MaskkitError, match=rf"^{f}: seeds=0,-1: expected integers in \[0, 2\*\*32\)"):
        load_sweep(str(f))
    with pytest.raises(MaskkitError, match=r"^train.lr: Input should be less than or equal to 1 \(got 1e\+38\); expected a "
                                           r"finite number in \(0, 1\]$"):
        resolve(["train.lr=1e38"])
    with pytest.raises(MaskkitError, match=r"^data.sources\[0\] \(phantoms\)\.seed: dataset 'phantoms' option 'seed': Input should "
                                           r"be greater than or equal to 0"):
        resolve(['data.sources=[{"name": "phantoms", "seed": -3}]'])


def test_compose_takes_a_bare_strategy_name():
    out = invoke("compose", "image_self")
    assert out.returncode == 0, out.stderr
    assert '"image_self"' in out.stdout and "modality=image" in out.stdout


def test_compose_and_check_read_a_composition_argument_alike(tmp_path):
    """One parser (maskkit.compose.parse_spec) for both commands: the same line for bad JSON, and
    inline lists / quoted names / files read alike."""
    bad = "error: inline composition is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    for cmd in ("compose", "check"):
        out = run(cmd, "{bad")
        assert out.returncode == 2 and out.stderr.strip() == bad, (cmd, out.stderr)
    f = tmp_path / "m.yaml"
    f.write_text("union: {of: [image_self, prompt_driven]}\n")
    for spec in (str(f), '"image_self"'):
        out = invoke("check", spec, "--n", "4", "--t", "4", "--b", "2")
        assert out.returncode == 0 and "passes" in out.stdout, out.stderr


def test_sweep_presets_replace_the_sweep_files(tmp_path):
    """`maskkit sweep FILE --presets P` runs P, as --seeds and --align-steps replace theirs (it was
    ignored: the file's presets ran): the file's clip is not trained, the preset named is checked."""
    f = tmp_path / "s.yaml"
    f.write_text("presets: [clip]\nseeds: [0]\nargs: [data.n=8, data.val_n=8, train.steps=1, train.batch_size=4, runtime.progress=false]\n")
    out = run("sweep", str(f), "--presets", "no_such_preset", "--out", str(tmp_path / "sw"))
    assert out.returncode == 2 and "unknown preset 'no_such_preset'" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "sw" / "runs").exists()


def test_a_renamed_builtin_sweep_names_its_new_name():
    """The issue-numbered sweeps are named after what they measure; the old name says which."""
    import pytest

    from maskkit.errors import MaskkitError
    from maskkit.sweep import RENAMED, builtin_sweeps, load_sweep

    assert set(RENAMED.values()) <= set(builtin_sweeps()) and not set(RENAMED) & set(builtin_sweeps())
    with pytest.raises(MaskkitError, match=r"^sweep 'issue21_wallclock' was renamed 'sparse_equal_wallclock' "):
        load_sweep("issue21_wallclock")
    assert load_sweep("sparse_equal_wallclock").align_steps == 105
