"""Name collisions between plugins: built-ins keep their names whatever a hook's ``tryfirst`` /
``trylast`` asks; two third-party plugins registering one name are both refused it.

The plugins are real modules (written to disk, imported) registered in a real pluggy
``PluginManager`` next to the built-in modules, as ``get_plugin_manager`` does; one test goes
through an installed distribution's entry point and the CLI.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pluggy
import pytest

from maskkit import hookspecs
from maskkit.errors import UnknownNameError
from maskkit.plugins import BUILTIN_PLUGINS, build_registry, reset
from maskkit.testing import check_strategy


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setenv("MASKKIT_LOAD_PLUGINS", "")
    reset()
    yield
    reset()


def plugin_module(tmp_path, monkeypatch, module: str, code: str):
    """Write ``code`` as module ``module`` and import it (a real module, as pip would install)."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    sys.modules.pop(module, None)
    return importlib.import_module(module)


def manager(*plugins) -> pluggy.PluginManager:
    """Built-ins first, then ``(name, module)`` pairs: what ``get_plugin_manager`` builds."""
    pm = pluggy.PluginManager("maskkit")
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    for name, mod in plugins:
        pm.register(mod, name=name)
    return pm


def strategy_plugin(name: str, marker: str, extra: str = "mine_extra", preset: str = "mine_preset") -> str:
    """A plugin whose strategy ``name`` masks every token (so it is told apart from the built-in),
    plus a strategy ``extra`` and a preset ``preset``; ``marker``: the hookimpl options."""
    return f'''
import torch
from maskkit import hookimpl, MaskStrategy

class All(MaskStrategy):
    name = "{name}"
    requires = frozenset({{"image_tokens"}})
    stochastic = False
    def mask(self, ctx):
        return torch.ones(ctx.image_tokens.shape[:2], dtype=torch.bool, device=ctx.device)

class Extra(MaskStrategy):
    name = "{extra}"
    requires = frozenset({{"image_tokens"}})
    stochastic = False
    def mask(self, ctx):
        return torch.zeros(ctx.image_tokens.shape[:2], dtype=torch.bool, device=ctx.device)

@hookimpl({marker})
def register_strategies(register):
    register(All)
    register(Extra)

@hookimpl({marker})
def register_presets(register):
    register("{preset}", {{"image_mask": "{extra}"}}, "a plugin preset")
    register("xlip", {{"image_mask": "{name}"}}, "a plugin preset with a built-in's name")
'''


@pytest.mark.parametrize("marker", ["", "trylast=True", "tryfirst=True"])
def test_builtin_names_win_whatever_the_hook_order(tmp_path, monkeypatch, capsys, marker):
    mod = plugin_module(tmp_path, monkeypatch, f"mk_shadow_{len(marker)}", strategy_plugin("random", marker))
    reg = build_registry(manager(("maskkit-shadow:shadow", mod)))
    # every built-in is there, and 'random' / 'xlip' are the built-ins
    builtin_reg = build_registry(manager())
    assert set(builtin_reg.strategies) <= set(reg.strategies)
    assert set(builtin_reg.presets) <= set(reg.presets)
    assert reg.strategies["random"].__module__ == "maskkit.strategies.random"
    assert reg.strategy_sources["random"] == "maskkit.strategies"
    assert reg.presets["xlip"].source == "maskkit.presets"
    assert reg.presets["xlip"].config == builtin_reg.presets["xlip"].config
    # the rest of the plugin registers
    assert reg.strategy_sources["mine_extra"] == "maskkit-shadow:shadow"
    assert reg.presets["mine_preset"].source == "maskkit-shadow:shadow"
    assert reg.failed_plugins == {}
    want = ["plugin 'maskkit-shadow:shadow' registers strategy 'random', a built-in name; its strategy is skipped",
            "plugin 'maskkit-shadow:shadow' registers preset 'xlip', a built-in name; its preset is skipped"]
    assert reg.skipped == want
    assert capsys.readouterr().err.splitlines() == [f"maskkit: {line}" for line in want]
    check_strategy(reg.strategies["random"](ratio=0.5))


@pytest.mark.parametrize("first, second", [("", ""), ("trylast=True", "tryfirst=True"), ("tryfirst=True", "")])
def test_two_third_party_plugins_with_one_name_are_both_refused(tmp_path, monkeypatch, capsys, first, second):
    a = plugin_module(tmp_path, monkeypatch, f"mk_a{len(first)}", strategy_plugin("stripes", first, "a_extra", "a_preset"))
    b = plugin_module(tmp_path, monkeypatch, f"mk_b{len(second)}", strategy_plugin("stripes", second, "b_extra", "b_preset"))
    for order in ([("maskkit-a:a", a), ("maskkit-b:b", b)], [("maskkit-b:b", b), ("maskkit-a:a", a)]):
        reg = build_registry(manager(*order))
        assert "stripes" not in reg.strategies and "stripes" not in reg.strategy_sources
        assert reg.conflicts == {("strategy", "stripes"): ["maskkit-a:a", "maskkit-b:b"]}  # name order, not hook order
        assert {"a_extra", "b_extra", "random"} <= set(reg.strategies)
        assert reg.presets["a_preset"].source == "maskkit-a:a" and reg.presets["b_preset"].source == "maskkit-b:b"
        assert ("plugins 'maskkit-a:a' and 'maskkit-b:b' both register strategy 'stripes'; the name is refused to "
                "both (disable one with MASKKIT_DISABLE_PLUGINS)") in reg.skipped
        with pytest.raises(UnknownNameError, match=r"^strategy 'stripes' is registered by plugins 'maskkit-a:a' and "
                                                   r"'maskkit-b:b' and refused to all of them; keep one with MASKKIT_DISABLE_PLUGINS$"):
            reg.strategy("stripes")
    assert "Traceback" not in capsys.readouterr().err


def test_a_third_plugin_with_a_refused_name_is_refused_too(tmp_path, monkeypatch):
    mods = [(f"maskkit-{c}:{c}", plugin_module(tmp_path, monkeypatch, f"mk_three_{c}", strategy_plugin("stripes", "", f"{c}_x", f"{c}_p")))
            for c in "abc"]
    reg = build_registry(manager(*mods))
    assert "stripes" not in reg.strategies
    assert reg.conflicts[("strategy", "stripes")] == ["maskkit-a:a", "maskkit-b:b", "maskkit-c:c"]
    assert ("plugin 'maskkit-c:c' registers strategy 'stripes', which 'maskkit-a:a' and 'maskkit-b:b' "
                               "also register; the name is refused to all of them") in reg.skipped


def test_a_plugin_registering_one_name_twice_fails_as_a_whole(tmp_path, monkeypatch):
    mod = plugin_module(tmp_path, monkeypatch, "mk_twice", strategy_plugin("twice", "", extra="twice"))
    reg = build_registry(manager(("maskkit-twice:twice", mod)))
    assert reg.failed_plugins["maskkit-twice"] == "PluginError: strategy 'twice' is registered twice by 'maskkit-twice:twice'"
    assert "twice" not in reg.strategies and "mine_preset" not in reg.presets


def test_an_installed_trylast_plugin_leaves_the_cli_its_builtins(tmp_path, monkeypatch):
    """Through an entry point of a real installed distribution, as a user meets it."""
    root = tmp_path / "dist"
    root.mkdir()
    (root / "mk_trylast.py").write_text(textwrap.dedent(strategy_plugin("random", "trylast=True")))
    info = root / "maskkit_trylast-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: maskkit-trylast\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[maskkit]\nmk_trylast = mk_trylast\n")
    env = {**os.environ, "MASKKIT_LOAD_PLUGINS": "maskkit-trylast",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "check", "random"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("registers strategy 'random', a built-in name; its strategy is skipped") == 1
    assert "Traceback" not in out.stderr
