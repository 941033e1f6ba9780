"""The command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "maskkit.cli", *args], capture_output=True, text=True, env=env)


def test_strategies_json_lists_builtins_with_sources():
    out = run("strategies", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["report_cross"]["inputs"] == "image_tokens, report_tokens"
    assert rows["report_cross"]["source"] == "maskkit.strategies"
    assert rows["random"]["modality"] == "image|text"


def test_strategies_table():
    out = run("strategies", "image*")
    assert out.returncode == 0 and "image_self" in out.stdout and "report_cross" not in out.stdout


def test_compose_resolves_preset():
    out = run("compose", "xlip")
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
    out = run("check", '{"union": {"of": ["image_self", "prompt_driven"]}}')
    assert out.returncode == 0 and "passes" in out.stdout


def test_option_range_errors_are_usage_errors_not_tracebacks(tmp_path):
    """typer vendors its own click: its BadParameter must print one error line, not a traceback."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "phantoms", "--n", "0", "--out", str(tmp_path / "p")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "Invalid value for '--n'" in out.stderr, out.stderr


def test_compose_takes_a_bare_strategy_name():
    import json as _json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "compose", "image_self"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert '"image_self"' in out.stdout and "modality=image" in out.stdout
