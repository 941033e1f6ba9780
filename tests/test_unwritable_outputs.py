"""Every command that writes checks where it writes before any work:
an output folder that cannot be written is one line naming the option, the path and the reason,
exit 2, no traceback, nothing written. Two kinds of unwritable place: a path under a regular file
(not a folder: fails for root too) and a folder without write permission (mode 0o500; as root,
the commands run as the unprivileged user 65534, for whom the permission holds)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from maskkit.errors import OutputWriteError
from maskkit.io import check_writable_dir, check_writable_file

from run_helpers import env_for, run_main_each

# each command that writes, with its output at OUT (a folder) or OUT.json / OUT.png (a file); the run
# given to eval / visualize does not exist: the output is checked before the run is loaded
COMMANDS = {
    "run": ["run", "data.n=24", "runtime.out_dir=OUT"],
    "phantoms": ["phantoms", "--n", "4", "--out", "OUT"],
    "prepare": ["prepare", "phantoms", "--out", "OUT"],
    "sweep": ["sweep", "--presets", "xlip", "--out", "OUT"],
    "idset": ["idset", "chexpert", "--out", "OUT.json"],
    "eval zeroshot": ["eval", "zeroshot", "RUN", "--out", "OUT"],
    "eval finetune": ["eval", "finetune", "RUN", "--out", "OUT"],
    "eval finetune --splits": ["eval", "finetune", "RUN", "--splits", "OUT"],
    "eval retrieval (a .json file)": ["eval", "retrieval", "RUN", "--out", "OUT.json"],
    "eval masks": ["eval", "masks", "RUN", "--out", "OUT"],
    "visualize masks": ["visualize", "masks", "RUN", "--out", "OUT"],
    "visualize text": ["visualize", "text", "RUN", "--out", "OUT"],
    "visualize run": ["visualize", "run", "RUN", "--out", "OUT.png"],
    "export": ["export", "RUN", "--format", "open_clip", "--out", "OUT"],
}

def run_all(base: Path, out: str, as_user: int | None = None) -> dict[str, tuple[int, str]]:
    run = base / "norun"
    (run / "metrics.jsonl").parent.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "align_loss": 1.0}\n')  # for visualize run: a run's curves
    argvs = [[a.replace("OUT", str(base / out)).replace("RUN", str(run)) for a in argv] for argv in COMMANDS.values()]
    drop = [] if as_user is None else ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups"]
    return dict(zip(COMMANDS, run_main_each(argvs, tuple(drop), cwd=base, env=env_for(HOME=str(base), PYTHONDONTWRITEBYTECODE="1"))))


def check(results: dict, base: Path, before: set, want: str) -> None:
    for name, (code, err) in results.items():
        lines = [l for l in err.splitlines() if l.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, f"{name}: {err[-2000:]}"
        what = "runtime.out_dir" if name == "run" else "--splits" if name.endswith("--splits") else "--out"
        assert lines[0].startswith(f"error: {what} {base}/") and want in lines[0], f"{name}: {lines[0]}"
    assert {str(p) for p in base.rglob("*")} == before  # nothing written, nothing left by the checks


def test_an_output_under_a_file_is_one_line_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    before = {str(p) for p in tmp_path.rglob("*")} | {str(tmp_path / "norun"), str(tmp_path / "norun" / "metrics.jsonl")}
    results = run_all(tmp_path, "afile/sub/out")
    check(results, tmp_path, before, f"cannot make it: {tmp_path / 'afile'} is a file, not a folder")
    # the messages name the option and the path given
    assert results["phantoms"][1].strip() == f"error: --out {tmp_path}/afile/sub/out: cannot make it: {tmp_path}/afile is a file, not a folder"
    assert results["visualize run"][1].strip() == f"error: --out {tmp_path}/afile/sub/out.png: cannot make it: {tmp_path}/afile is a file, not a folder"


@pytest.fixture
def shared_tmp():
    """A folder every user may enter (pytest's tmp_path is private to its user)."""
    d = Path(tempfile.mkdtemp(prefix="maskkit-unwritable-"))
    d.chmod(0o755)
    yield d
    for p in [d, *d.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(d)


def test_an_output_in_a_folder_without_write_permission_is_one_line_before_any_work(shared_tmp):
    ro = shared_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)  # readable and enterable by all, writable by none (0o500 for the owner as the issue tried it, 5 for others)
    before = {str(p) for p in shared_tmp.rglob("*")} | {str(shared_tmp / "norun"), str(shared_tmp / "norun" / "metrics.jsonl")}
    user = 65534 if os.geteuid() == 0 else None  # root writes anywhere: run as "nobody"
    if user is not None and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux) to run the commands as another user")
    results = run_all(shared_tmp, "ro/out", as_user=user)
    check(results, shared_tmp, before, f"cannot write in {ro} (Permission denied)")


def test_the_checks_themselves(tmp_path):
    """In this process: a file in the way at any depth, an existing file given as a folder and a
    folder given as a file; a writable place passes and is left as it was."""
    (tmp_path / "f").write_text("x")
    for path, said in [(tmp_path / "f", "is a file, not a folder"),
                       (tmp_path / "f" / "a" / "b", f"cannot make it: {tmp_path / 'f'} is a file, not a folder")]:
        with pytest.raises(OutputWriteError, match="^--out " + str(path) + ": " + said + "$"):
            check_writable_dir(path, "--out")
    with pytest.raises(OutputWriteError, match="is a folder, not a file"):
        check_writable_file(tmp_path, "--out")
    assert check_writable_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    check_writable_file(tmp_path / "x.json", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_an_existing_run_directory_without_write_permission_is_named_as_existing(shared_tmp):
    """runtime.out_dir is writable but the run's own directory (runtime.name) exists read-only
    (another user's run, a finished run made read-only): one line that it cannot be written in,
    not that it cannot be made."""
    shared_tmp.chmod(0o777)  # runtime.out_dir itself writable by the user the command runs as
    run = shared_tmp / "st"
    run.mkdir()
    run.chmod(0o555)
    user = 65534 if os.geteuid() == 0 else None
    if user is not None and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux) to run the commands as another user")
    drop = () if user is None else ("setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups")
    [(code, err)] = run_main_each([["run", "data.n=24", f"runtime.out_dir={shared_tmp}", "runtime.name=st", "runtime.resume=auto"]],
                                  drop, cwd=shared_tmp, env=env_for(HOME=str(shared_tmp), PYTHONDONTWRITEBYTECODE="1"))
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"error: runtime.out_dir: cannot write in the run directory {run}: ") and "Permission denied" in lines[0], lines[0]
