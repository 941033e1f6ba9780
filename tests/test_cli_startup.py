"""The command line starts at once: its modules, ``--help`` and a config key error import no torch.

Deterministic (which modules were imported, from ``python -X importtime``), not timed:
docs/benchmarks.md has the wall times.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = {"torch", "timm", "open_clip", "transformers"}
ROOT = Path(__file__).resolve().parent.parent
#: the plugins this repository ships, imported from this checkout; no other installed plugin loads
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())


def _run(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime ARGS`` with this checkout's maskkit and shipped plugins: the
    process and which of :data:`HEAVY` it imported."""
    env = {**os.environ, "MASKKIT_LOAD_PLUGINS": ",".join(p.name for p in PLUGINS),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, PLUGINS), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=300, env=env)
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    return out, imported & HEAVY


def _errors(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if not line.startswith("import time:")]


def test_the_cli_and_the_config_modules_import_no_torch():
    out, heavy = _run("-c", "import maskkit, maskkit.cli, maskkit.config, maskkit.model, maskkit.model.config, maskkit.roles")
    assert out.returncode == 0, _errors(out)
    assert heavy == set()


def test_the_public_api_is_unchanged():
    out, heavy = _run("-c", "from maskkit import build_strategy, MaskContext\n"
                            "assert build_strategy('random').name == 'random' and MaskContext.__name__ == 'MaskContext'")
    assert out.returncode == 0, _errors(out)
    assert "torch" in heavy  # imported when a name that needs it is used


@pytest.mark.parametrize("args, line", [
    (["--help"], None),
    (["strategies", "--help"], None),
    (["eval", "zeroshot", "--help"], None),
    (["run", "preset=xlip", "nonsense.key=1"], "error: unknown key 'nonsense.key' (from cli)"),
    (["run", "train.lrr=1"], "error: unknown key 'train.lrr'; did you mean 'train.lr'"),
    (["run", "model.image_mask=random"], "error: set the strategy tree at top level (image_mask=...)"),
    (["run", "runtime.eval_zeroshot=true"], "error: runtime.eval_zeroshot was replaced by runtime.evaluations"),
])
def test_help_and_key_errors_answer_without_torch(args, line):
    out, heavy = _run("-m", "maskkit", *args)
    assert heavy == set()
    if line is None:
        assert out.returncode == 0 and "Usage" in out.stdout
    else:
        assert out.returncode == 2 and " ".join(_errors(out)).startswith(line), _errors(out)


def test_eval_lists_every_evaluation_without_torch():
    """``maskkit eval --help`` lists the built-in and the plugins' evaluations from the
    evaluation hooks alone (``get_registry("evaluation")``): no strategy class, no torch."""
    out, heavy = _run("-m", "maskkit", "eval", "--help")
    assert out.returncode == 0 and heavy == set(), _errors(out)
    assert all(name in out.stdout for name in ("zeroshot", "retrieval", "report_length")), out.stdout
    out, heavy = _run("-m", "maskkit", "eval", "zeroshott", "runs/x")
    assert out.returncode == 2 and heavy == set()
    assert "Error: eval 'zeroshott': not a registered evaluation; did you mean 'zeroshot'?" in out.stderr, _errors(out)


def test_help_paragraphs_are_reflowed_to_the_terminal():
    """A command's help wraps at the terminal's width, never at the docstring's source line breaks
    ("stopped by SIGTERM,⏎ SIGUSR1"): every help paragraph is one line, list items their own."""
    from typer.testing import CliRunner

    from maskkit.cli import app, reflow

    def helps(t):
        for c in t.registered_commands:
            yield c.name, c.help
        for g in t.registered_groups:
            yield g.name, g.typer_instance.info.help
            yield from helps(g.typer_instance)

    for name, text in helps(app):
        for para in (text or "").split("\n\n"):
            assert "\n" not in para or all(l.startswith(("- ", "* ")) for l in para.split("\n")[1:]), (name, para)
    out = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "75 stopped by SIGTERM, SIGUSR1 or SIGUSR2 after writing the checkpoint" in out
    assert reflow("a\nb\n\n- one\n  more\n- two\n\n\bkeep\nas is") == "a b\n\n- one more\n- two\n\n\bkeep\nas is"
