"""The command line starts at once: its modules, ``--help`` and a config key error import no torch.

Deterministic (which modules were imported, from ``python -X importtime``), not timed:
docs/benchmarks.md has the wall times.
"""

import subprocess
import sys

import pytest

HEAVY = {"torch", "timm", "open_clip", "transformers"}


def _run(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime ARGS``: the process and which of :data:`HEAVY` it imported."""
    out = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=300)
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
