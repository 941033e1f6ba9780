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
from maskkit.errors import MaskkitError, PluginError
from maskkit.plugins import get_registry, reset
from maskkit.testing import check_strategy, make_context, only_plugins


#: the plugin this repository ships (plugins/maskkit-blockwise); the only environment plugin
#: these tests let load, so another plugin installed here cannot change what they see
SHIPPED = "maskkit-blockwise"


@pytest.fixture(autouse=True)
def _only_our_plugins(monkeypatch):
    """Load the built-ins, the shipped plugin and the plugins a test installs itself - nothing else."""
    monkeypatch.setenv("MASKKIT_LOAD_PLUGINS", SHIPPED)
    reset()


def install_fake_dist(tmp_path, monkeypatch, dist: str, module: str, code: str, *, allow: bool = True,
                      package: dict[str, str] | None = None) -> None:
    """A real installed distribution (dist-info + module on sys.path); ``allow``: this test loads it.
    ``package``: more modules (file name -> code) beside ``code``, which is then the package's
    ``__init__.py``."""
    root = tmp_path / dist
    root.mkdir()
    if package is None:
        (root / f"{module}.py").write_text(textwrap.dedent(code))
    else:
        (root / module).mkdir()
        for name, text in {"__init__.py": code, **package}.items():
            (root / module / name).write_text(textwrap.dedent(text))
        for name in package:
            sys.modules.pop(f"{module}.{name.removesuffix('.py')}", None)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[maskkit]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(root))
    if allow:
        monkeypatch.setenv("MASKKIT_LOAD_PLUGINS", f"{os.environ['MASKKIT_LOAD_PLUGINS']},{dist}")
    importlib.invalidate_caches()
    sys.modules.pop(module, None)  # a module of that name imported by an earlier test
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


def _broken_plugin_is_reported_once_and_others_work(tmp_path, monkeypatch, capsys):
    install_fake_dist(tmp_path, monkeypatch, "maskkit-broken", "mk_broken", "raise ImportError('needs libfoo')\n")
    reg = get_registry()
    assert "union" in reg.strategies
    assert reg.failed_plugins == {"maskkit-broken": "ImportError: needs libfoo"}
    err = capsys.readouterr().err
    assert err.count("plugin 'maskkit-broken' failed to load") == 1
    assert err.count("maskkit: plugin") == 1


def test_broken_plugin_is_reported_once_and_others_work(tmp_path, monkeypatch, capsys):
    _broken_plugin_is_reported_once_and_others_work(tmp_path, monkeypatch, capsys)


def test_tests_are_isolated_from_a_broken_plugin_in_the_environment(tmp_path, monkeypatch, capsys):
    """Another broken plugin installed in the environment changes nothing the test sees..."""
    install_fake_dist(tmp_path, monkeypatch, "maskkit-foreign", "mk_foreign",
                      "raise RuntimeError('foreign and broken')\n", allow=False)
    _broken_plugin_is_reported_once_and_others_work(tmp_path, monkeypatch, capsys)
    # ... and it really is installed: without the isolation it loads (and fails)
    monkeypatch.delenv("MASKKIT_LOAD_PLUGINS")
    reset()
    assert get_registry().failed_plugins["maskkit-foreign"] == "RuntimeError: foreign and broken"


def test_load_plugins_empty_loads_builtins_only(tmp_path, monkeypatch):
    install_fake_dist(tmp_path, monkeypatch, "maskkit-checker", "mk_checker", GOOD)
    monkeypatch.setenv("MASKKIT_LOAD_PLUGINS", "")
    reset()
    names = list_strategies()
    assert "checker" not in names and "blockwise" not in names and "union" in names


def test_duplicate_of_a_builtin_name_is_skipped_in_one_line(tmp_path, monkeypatch, capsys):
    install_fake_dist(tmp_path, monkeypatch, "maskkit-dup", "mk_dup", '''
from maskkit import hookimpl, MaskStrategy
class R(MaskStrategy):
    name = "random"
    def mask(self, ctx):
        return None
class Other(MaskStrategy):
    name = "dup_other"
    def mask(self, ctx):
        return None
@hookimpl
def register_strategies(register):
    register(Other)
    register(R)
''')
    reg = get_registry()
    # the built-in keeps its name; the plugin's duplicate is skipped in one line, the rest registers
    assert "maskkit-dup" not in reg.failed_plugins
    assert reg.skipped == ["plugin 'maskkit-dup:mk_dup' registers strategy 'random', a built-in name; its strategy is skipped"]
    assert capsys.readouterr().err == f"maskkit: {reg.skipped[0]}\n"
    assert reg.strategy_sources["dup_other"] == "maskkit-dup:mk_dup"
    assert reg.strategies["random"].__module__ == "maskkit.strategies.random"
    check_strategy("random")


# --- a plugin whose registration hook raises ------------------------------

HALF_DONE = '''
import torch
from maskkit import hookimpl, MaskStrategy

class Half(MaskStrategy):
    name = "half_done"
    requires = frozenset({"image_tokens"})
    def mask(self, ctx):
        return torch.zeros(ctx.image_tokens.shape[:2], dtype=torch.bool)

@hookimpl
def register_strategies(register):
    register(Half)
    RAISE_IN_STRATEGIES

@hookimpl
def register_presets(register):
    register("half_preset", {"image_mask": "half_done"}, "undone when the plugin fails")
    RAISE_IN_PRESETS
'''


def half_done_plugin(raises_in: str, statement: str) -> str:
    """A plugin that registers a strategy and a preset, with ``statement`` (a raise) in one hook."""
    code = HALF_DONE.replace(f"RAISE_IN_{raises_in.upper()}", statement)
    return code.replace("RAISE_IN_STRATEGIES", "pass").replace("RAISE_IN_PRESETS", "pass")


RAISES_IN_STRATEGIES = half_done_plugin("strategies", 'raise RuntimeError("cannot find model weights,\\nyou have two options, ...")')
RAISES_IN_PRESETS = half_done_plugin("presets", 'raise KeyError("preset table")')


@pytest.mark.parametrize("code, hook, why", [
    (RAISES_IN_STRATEGIES, "register_strategies", "RuntimeError: cannot find model weights, you have two options, ..."),
    (RAISES_IN_PRESETS, "register_presets", "KeyError: 'preset table'"),
])
def test_plugin_whose_hook_raises_is_isolated(tmp_path, monkeypatch, capsys, code, hook, why):
    install_fake_dist(tmp_path, monkeypatch, "maskkit-raises", "mk_raises", code)
    reg = get_registry()
    assert reg.failed_plugins == {"maskkit-raises": why}
    assert "half_done" not in reg.strategies and "half_preset" not in reg.presets   # undone
    assert {"random", "union", "image_self", "causal"} <= set(reg.strategies)
    assert "xlip" in reg.presets
    err = capsys.readouterr().err
    assert err == f"maskkit: plugin 'maskkit-raises' failed in {hook} and is skipped ({why})\n"
    # everything else works: build, compose, conformance; the message is printed once
    check_strategy("random")
    assert build_strategy({"union": {"of": ["image_self", "random"]}})(make_context(B=2, N=8)).sum(-1).tolist() == [6, 6]
    assert capsys.readouterr().err == ""


def test_cli_commands_work_with_a_plugin_whose_hook_raises(tmp_path, monkeypatch):
    import json
    import subprocess

    install_fake_dist(tmp_path, monkeypatch, "maskkit-raises", "mk_raises", RAISES_IN_STRATEGIES)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "maskkit-raises"), os.environ.get("PYTHONPATH", "")])}
    for args in (["strategies", "--json"], ["check", "random"], ["compose", "xlip"]):
        out = subprocess.run([sys.executable, "-m", "maskkit.cli", *args], capture_output=True, text=True, env=env)
        assert out.returncode == 0, (args, out.stderr)
        assert out.stderr.count("maskkit: plugin 'maskkit-raises' failed in register_strategies") == 1, out.stderr
        assert "Traceback" not in out.stderr
        if args[0] == "strategies":
            names = [r["name"] for r in json.loads(out.stdout)]
            assert "random" in names and "half_done" not in names


# --- a strategy's declarations are checked when it is registered (item 13) -------------------

BAD_DECLARATION = '''
import torch
from maskkit import hookimpl, MaskStrategy

class Fine(MaskStrategy):
    name = "fine_one"
    requires = frozenset({"image_tokens"})
    def mask(self, ctx):
        return torch.zeros(ctx.image_tokens.shape[:2], dtype=torch.bool)

class Bad(MaskStrategy):
    name = "typo_strategy"
    DECL
    def mask(self, ctx):
        return torch.zeros(ctx.image_tokens.shape[:2], dtype=torch.bool)

@hookimpl
def register_strategies(register):
    register(Fine)
    register(Bad)
'''


@pytest.mark.parametrize("decl, why", [
    ('requires = frozenset({"image_token"})',
     "PluginError: plugin 'maskkit-typo:mk_typo': strategy 'typo_strategy' requires unknown input 'image_token'; did you mean 'image_tokens'?"),
    ('requires = frozenset({"pixels"})',
     "PluginError: plugin 'maskkit-typo:mk_typo': strategy 'typo_strategy' requires unknown input 'pixels'; expected one of "
     "image_tokens, report_tokens, report_valid, prompt_tokens, entities, attention"),
    ('requires = "image_tokens"',
     "PluginError: plugin 'maskkit-typo:mk_typo': strategy 'typo_strategy' declares requires = 'image_tokens'; "
     "expected a frozenset of input names, e.g. frozenset({'image_tokens'})"),
    ('modality = "images"',
     "PluginError: plugin 'maskkit-typo:mk_typo': strategy 'typo_strategy' declares modality = 'images'; expected one of "
     "image, text (or declared('image', 'text') when instances decide)"),
    ('output = "attn"',
     "PluginError: plugin 'maskkit-typo:mk_typo': strategy 'typo_strategy' declares output = 'attn'; expected one of "
     "tokens, attention (or declared('tokens', 'attention') when instances decide)"),
    ('modality = ("image", "text")',
     "PluginError: plugin 'maskkit-typo:mk_typo': strategy 'typo_strategy' declares several values of modality "
     "('image', 'text') but its Config has no 'modality' field (and it does not override resolved_modality) to choose one"),
    ('stochastic = "yes"',
     "PluginError: plugin 'maskkit-typo:mk_typo': strategy 'typo_strategy' declares stochastic = 'yes'; expected True or False"),
])
def test_bad_declaration_fails_registration_in_one_line(tmp_path, monkeypatch, capsys, decl, why):
    install_fake_dist(tmp_path, monkeypatch, "maskkit-typo", "mk_typo", BAD_DECLARATION.replace("DECL", decl))
    reg = get_registry()
    assert reg.failed_plugins == {"maskkit-typo": why}
    assert "fine_one" not in reg.strategies and "random" in reg.strategies
    err = capsys.readouterr().err.splitlines()
    assert err == [f"maskkit: plugin 'maskkit-typo' failed in register_strategies and is skipped ({why})"]


def test_registry_add_strategy_raises_directly():
    from maskkit.core import MaskStrategy
    from maskkit.plugins import Registry

    class Typo(MaskStrategy):
        name = "typo"
        requires = frozenset({"report_token"})

        def mask(self, ctx):
            return None

    class Abstract(MaskStrategy):
        name = "abstract"

    with pytest.raises(PluginError, match=r"^plugin 'here': strategy 'typo' requires unknown input 'report_token'; did you mean 'report_tokens'"):
        Registry().add_strategy(Typo, "here")
    with pytest.raises(PluginError, match=r"^plugin 'here': strategy 'abstract' does not implement mask$"):
        Registry().add_strategy(Abstract, "here")


with only_plugins(SHIPPED):  # what this module's tests see: the built-ins and the shipped plugin
    _REGISTERED = list_strategies()


@pytest.mark.parametrize("name", _REGISTERED)
def test_every_registered_strategy_keeps_its_declarations(name):
    """Built instances resolve modality/output among what the class declares and assign neither."""
    from maskkit.core import declared_values

    cls = get_registry().strategy(name)
    specs = [{name: {"of": ["image_self", "random"]}}, {name: {"of": ["entity", "causal"]}}] if cls.composite else [name]
    if "modality" in cls.Config.model_fields:
        specs += [{name: {"modality": m}} for m in declared_values(cls, "modality")]
    for spec in specs:
        s = build_strategy(spec)
        assert s.modality in declared_values(cls, "modality") and s.output in declared_values(cls, "output")
        assert "modality" not in vars(s) and "output" not in vars(s)
        assert set(s.explain(make_context())) >= {"mask", "scores"}


def test_registry_is_not_filled_on_import():
    import subprocess

    code = "import maskkit, maskkit.plugins as p; assert p._registry is None and p._pm is None; print('lazy')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "lazy"


def test_wildcard_listing():
    assert list_strategies("report*") == ["report_cross"]
    text, image = set(list_strategies(modality="text")), set(list_strategies(modality="image"))
    assert {"causal", "entity", "intersect", "random", "union"} <= text
    assert not {"image_self", "report_cross", "prompt_driven", "blockwise"} & text
    assert {"image_self", "report_cross", "prompt_driven", "random", "union", "intersect"} <= image
    assert not {"entity", "causal"} & image
    from maskkit.core import declared_modalities

    for name, cls in get_registry().strategies.items():   # exactly what each class declares
        for m in ("image", "text"):
            assert (name in list_strategies(modality=m)) == (m in declared_modalities(cls)), (name, m)


def test_modality_is_a_class_declaration_instances_never_assign():
    from maskkit.strategies.random import RandomMask

    text = build_strategy({"random": {"modality": "text"}})
    image = build_strategy("random")
    assert RandomMask.modality == ("image", "text")               # the declaration, unchanged
    assert (text.modality, image.modality) == ("text", "image")   # resolved per instance
    assert (text.resolved_modality, image.resolved_modality) == ("text", "image")
    assert "modality" not in vars(text) and "modality" not in vars(image)
    u = build_strategy({"intersect": {"of": ["entity", "causal"]}})
    assert (u.modality, u.output) == ("text", "attention")
    assert type(u).modality == ("image", "text") and type(u).output == ("tokens", "attention")
    assert "modality" not in vars(u) and "output" not in vars(u)


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
    files = dict(re.findall(r"`maskkit_checker/(\w+\.py)`:\n\n```python\n(.*?)```", doc, re.S))
    assert set(files) == {"__init__.py", "strategy.py"}
    assert "import torch" not in files["__init__.py"]  # the hook module stays light (the doc's own advice)
    install_fake_dist(tmp_path, monkeypatch, "maskkit-checker", "maskkit_checker", files.pop("__init__.py"),
                      package=files)
    check_strategy("checkerboard", N=36)
    for side in (14, 6):  # 224 px and scale=tiny: a checkerboard on each grid, no two neighbours alike
        m = build_strategy("checkerboard")(make_context(B=2, N=side * side)).view(2, side, side)
        assert m.sum((1, 2)).tolist() == [side * side // 2] * 2
        assert not (m[:, 1:] == m[:, :-1]).any() and not (m[:, :, 1:] == m[:, :, :-1]).any()
    with pytest.raises(MaskkitError, match="checkerboard: 15 image tokens are not a square grid"):
        build_strategy("checkerboard")(make_context(B=1, N=15))


HALF_BROKEN = '''
from maskkit import hookimpl

@hookimpl
def register_strategies(register):
    raise RuntimeError("no strategies today")

@hookimpl
def register_evaluations(register):
    def evaluate(run, settings):
        """Count nothing (test plugin)."""
    register("halfbroken", evaluate)
'''


def test_a_registry_of_one_kind_calls_that_kind_of_hook_only(tmp_path, monkeypatch, capsys):
    """``get_registry("evaluation")`` (what ``maskkit eval --help`` lists) calls no strategy hook,
    so no strategy class and no torch is imported for it; the whole registry still undoes a
    plugin one of whose hooks fails, and ``maskkit eval NAME RUN`` runs through that one."""
    from maskkit.cli import app
    from maskkit.errors import UnknownNameError
    from typer.testing import CliRunner

    install_fake_dist(tmp_path, monkeypatch, "maskkit-halfbroken", "mk_halfbroken", HALF_BROKEN)
    one = get_registry("evaluation")
    assert one.strategies == {} and one.presets == {}
    assert {"zeroshot", "halfbroken"} <= set(one.evaluations)
    assert get_registry("evaluation") is one  # cached
    with pytest.raises(ValueError, match=r"get_registry\(kind='strategies'\): expected one of strategy, preset"):
        get_registry("strategies")
    res = CliRunner().invoke(app, ["eval", "halfbroken", str(tmp_path / "no-run")])
    assert isinstance(res.exception, UnknownNameError), res.output  # one line, exit 2, from the maskkit script
    assert str(res.exception).startswith("unknown evaluation 'halfbroken'; registered: finetune, "), res.exception
    whole = get_registry()
    assert "halfbroken" not in whole.evaluations and "random" in whole.strategies
    assert "no strategies today" in whole.failed_plugins["maskkit-halfbroken"]
    assert get_registry("evaluation") is whole  # once built, the whole registry answers every kind
    with pytest.raises(UnknownNameError):
        whole.evaluation("halfbroken")


def test_stochastic_defaults_are_what_the_contract_table_says():
    """MaskStrategy is random unless it says otherwise (it needs a generator); a ScoredStrategy's
    top-k reads none, so it runs without one; docs/plugins.md's table states both defaults."""
    from pathlib import Path

    from maskkit import MaskStrategy, ScoredStrategy, StrategyConfig
    from maskkit.errors import MissingInputError

    class Plain(MaskStrategy):
        name = "plain_default"
        requires = frozenset({"image_tokens"})

        def mask(self, ctx):
            return torch.zeros(ctx.image_tokens.shape[:2], dtype=torch.bool)

    class Scored(ScoredStrategy):
        name = "scored_default"
        requires = frozenset({"image_tokens"})

        class Config(StrategyConfig):
            ratio: float = 0.5

        def scores(self, ctx):
            return ctx.image_tokens.float().norm(dim=-1)

    import dataclasses

    ctx = dataclasses.replace(make_context(seed=0), generator=None)
    assert (MaskStrategy.stochastic, ScoredStrategy.stochastic) == (True, False)
    with pytest.raises(MissingInputError, match="needs MaskContext.generator"):
        Plain(None)(ctx)
    assert Scored(None)(ctx).sum(1).tolist() == [8, 8, 8]
    row = next(line for line in (Path(__file__).parent.parent / "docs" / "plugins.md").read_text().splitlines()
               if line.startswith("| `stochastic` |"))
    assert "default `True` on `MaskStrategy`, `False` on `ScoredStrategy`" in row
