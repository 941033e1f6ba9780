"""The plugin system: entry points, MASKKIT_DISABLE_PLUGINS, broken and conflicting plugins.

Third-party plugins here are real installed distributions: a ``*.dist-info`` folder with an
``entry_points.txt`` and a module, on ``sys.path`` - what pip leaves behind.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap

import pytest
import torch

from maskkit import build_strategy, list_strategies
from maskkit.errors import PluginError
from maskkit.plugins import get_registry, reset
from maskkit.testing import check_strategy, make_context


def install_fake_dist(tmp_path, monkeypatch, dist: str, module: str, code: str) -> None:
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(code))
    info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[maskkit]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    reset()


GOOD = '''
import torch
from maskkit import hookimpl, MaskStrategy
from maskkit.core import topk_mask, uniform_noise

class Checker(MaskStrategy):
    name = "checker"
    requires = frozenset({"image_tokens"})
    description = "Every other token (test plugin)."
    def mask(self, ctx):
        B, N = ctx.image_tokens.shape[:2]
        return (torch.arange(N, device=ctx.device) % 2 == 0).expand(B, N).clone()

@hookimpl
def register_strategies(register):
    register(Checker)

@hookimpl
def register_presets(register):
    register("checker_mim", {"image_mask": "checker"}, "test preset")
'''


def test_third_party_plugin_registers_strategy_and_preset(tmp_path, monkeypatch):
    install_fake_dist(tmp_path, monkeypatch, "maskkit-checker", "mk_checker", GOOD)
    reg = get_registry()
    assert reg.strategy_sources["checker"] == "maskkit-checker:mk_checker"
    assert reg.presets["checker_mim"].source == "maskkit-checker:mk_checker"
    m = build_strategy({"intersect": {"of": ["checker", {"random": {"ratio": 1.0}}]}})(make_context(B=2, N=6))
    assert m.tolist() == [[True, False, True, False, True, False]] * 2


@pytest.mark.parametrize("value", ["1", "all", "maskkit-checker", "mk_checker", "other,maskkit-checker"])
def test_disable_plugins(tmp_path, monkeypatch, value):
    install_fake_dist(tmp_path, monkeypatch, "maskkit-checker", "mk_checker", GOOD)
    monkeypatch.setenv("MASKKIT_DISABLE_PLUGINS", value)
    reset()
    assert "checker" not in list_strategies()
    assert "union" in list_strategies()  # built-ins always load


def test_broken_plugin_is_reported_once_and_others_work(tmp_path, monkeypatch, capsys):
    install_fake_dist(tmp_path, monkeypatch, "maskkit-broken", "mk_broken", "raise ImportError('needs libfoo')\n")
    reg = get_registry()
    assert "union" in reg.strategies
    assert reg.failed_plugins == {"maskkit-broken": "ImportError: needs libfoo"}
    err = capsys.readouterr().err
    assert err.count("plugin 'maskkit-broken' failed to load") == 1


def test_duplicate_name_names_both_sources(tmp_path, monkeypatch):
    install_fake_dist(tmp_path, monkeypatch, "maskkit-dup", "mk_dup", '''
from maskkit import hookimpl, MaskStrategy
class R(MaskStrategy):
    name = "random"
    def mask(self, ctx):
        return None
@hookimpl
def register_strategies(register):
    register(R)
''')
    with pytest.raises(PluginError, match=r"strategy 'random' is registered twice: by 'maskkit.strategies' .* and by 'maskkit-dup:mk_dup'"):
        get_registry()


def test_registry_is_not_filled_on_import():
    import subprocess

    code = "import maskkit, maskkit.plugins as p; assert p._registry is None and p._pm is None; print('lazy')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "lazy"


def test_wildcard_listing():
    assert list_strategies("report*") == ["report_cross"]
    assert set(list_strategies(modality="text")) >= {"entity", "causal"}


# --- the shipped plugin package in plugins/maskkit-blockwise ----------------------------------

def _blockwise_installed() -> bool:
    return importlib.util.find_spec("maskkit_blockwise") is not None


def test_blockwise_plugin_in_a_composition():
    if not _blockwise_installed():
        if os.environ.get("MASKKIT_EXPECT_PLUGINS"):
            pytest.fail("MASKKIT_EXPECT_PLUGINS is set but maskkit-blockwise is not installed")
        pytest.skip("plugins/maskkit-blockwise is not installed (pip install -e plugins/maskkit-blockwise)")
    reg = get_registry()
    assert reg.strategy_sources["blockwise"].startswith("maskkit-blockwise")
    s = build_strategy({"union": {"of": ["blockwise", "image_self"], "child_ratio": 0.5, "ratio": 0.75}})
    check_strategy(s)
    ctx = make_context(B=2, N=196, seed=3)
    m = build_strategy({"blockwise": {"ratio": 0.4}})(ctx).view(2, 14, 14)
    assert m.sum((1, 2)).tolist() == [78, 78]
    # block-shaped: far more masked 4-neighbours than random masking gives (0.4)
    same = (m[:, 1:, :] & m[:, :-1, :]).sum() / m[:, 1:, :].sum()
    assert same > 0.7


def test_docs_plugin_example_works(tmp_path, monkeypatch):
    """The complete example in docs/plugins.md installs, registers and passes conformance."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    code = re.search(r"`maskkit_checker.py`:\n\n```python\n(.*?)```", doc, re.S).group(1)
    install_fake_dist(tmp_path, monkeypatch, "maskkit-checker", "maskkit_checker", code)
    check_strategy("checkerboard")
    m = build_strategy("checkerboard")(make_context(B=2, N=196))
    assert m.sum(-1).tolist() == [98, 98]
