"""Every registered strategy, built-in or plugin, passes the same conformance checks."""

from __future__ import annotations

import pytest
import torch

from maskkit import list_strategies
from maskkit.plugins import get_registry, reset
from maskkit.testing import check_strategy, only_plugins

#: the built-ins and the plugin this repository ships; another plugin installed in the
#: environment does not change what this suite tests (plugin authors run check_strategy themselves)
SHIPPED = ("maskkit-blockwise",)

with only_plugins(*SHIPPED):
    NAMES = list_strategies()


@pytest.fixture(autouse=True)
def _only_our_plugins(monkeypatch):
    monkeypatch.setenv("MASKKIT_LOAD_PLUGINS", ",".join(SHIPPED))
    reset()


def _spec(name):
    cls = get_registry().strategy(name)
    if cls.composite:  # composites are tested over children of both modalities
        return [{name: {"of": ["image_self", "random"]}}, {name: {"of": ["entity", {"random": {"modality": "text"}}]}},
                {name: {"of": ["entity", "causal"]}}]
    return [name]


@pytest.mark.parametrize("name", NAMES)
def test_conformance(name):
    for spec in _spec(name):
        check_strategy(spec)


@pytest.mark.parametrize("name", NAMES)
def test_conformance_on_cuda(name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here; run on a GPU machine to check device placement")
    for spec in _spec(name):
        check_strategy(spec, device="cuda")


def test_every_builtin_is_registered():
    """Every strategy class defined in maskkit.strategies is registered, as the built-in plugin: the
    list of built-ins is its register hook (maskkit/strategies/__init__.py), not a copy here."""
    import importlib
    import inspect
    import pkgutil

    import maskkit.strategies as pkg
    from maskkit.plugins import get_registry

    defined = set()
    for mod in pkgutil.iter_modules(pkg.__path__):
        m = importlib.import_module(f"maskkit.strategies.{mod.name}")
        defined |= {c.name for _, c in inspect.getmembers(m, inspect.isclass)
                    if issubclass(c, MaskStrategy) and c.__module__ == m.__name__ and isinstance(c.__dict__.get("name"), str)}
    reg = get_registry()
    builtin = {n for n, src in reg.strategy_sources.items() if src == "maskkit.strategies"}
    assert builtin == defined and {"atypical", "union", "random"} <= builtin


# --- the kit itself -------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import warnings  # noqa: E402
import sys  # noqa: E402

from maskkit import build_strategy  # noqa: E402
from maskkit.core import ATTENTION_SHAPES, MaskStrategy, StrategyConfig, topk_mask, uniform_noise  # noqa: E402
from maskkit.testing import KIT_CONTEXTS, ConformanceWarning, has_choice, make_context  # noqa: E402


@pytest.mark.parametrize("spec", [
    {"random": {"ratio": 1.0}}, {"random": {"ratio": 0.0}},
    {"random": {"ratio": 1.0, "modality": "text"}}, {"random": {"ratio": 0.0, "modality": "text"}},
    {"entity": {"ratio": 1.0}}, {"entity": {"ratio": 0.0}},
    {"union": {"of": ["image_self", "random"], "ratio": 1.0}},
    {"union": {"of": ["image_self", {"random": {"ratio": 1.0}}], "ratio": None}},
    {"intersect": {"of": [{"random": {"modality": "text", "ratio": 1.0}}, "causal"]}},
])
def test_kit_passes_random_strategies_whose_count_leaves_no_choice(spec):
    s = build_strategy(spec)
    assert s.stochastic and not has_choice(s, make_context())
    check_strategy(s)


def test_kit_passes_blockwise_at_full_ratio():
    if "blockwise" not in NAMES:
        pytest.skip("plugins/maskkit-blockwise is not installed")
    check_strategy({"blockwise": {"ratio": 1.0}}, N=196)


class _Frozen(MaskStrategy):
    """Declares itself random, has a choice (ratio 0.5), but ignores the generator."""

    name = "frozen"
    requires = frozenset({"image_tokens"})

    class Config(StrategyConfig):
        ratio: float = 0.5

    def mask(self, ctx):
        return topk_mask(ctx.image_tokens[..., 0], self.config.ratio, self.valid(ctx))


class _Sneaky(_Frozen):
    """Declares itself deterministic, yet draws from the generator."""

    name = "sneaky"
    stochastic = False

    def mask(self, ctx):
        return topk_mask(uniform_noise(tuple(ctx.image_tokens.shape[:2]), ctx), self.config.ratio, self.valid(ctx))


class _IgnoresImagePadding(_Frozen):
    name = "ignores_padding"
    stochastic = False

    def mask(self, ctx):
        return topk_mask(ctx.image_tokens[..., 0], self.config.ratio)  # valid not passed


class _ReadsAttention(MaskStrategy):
    """Masks the image tokens that receive the most image self-attention (head mean)."""

    name = "reads_attention"
    requires = frozenset({"image_tokens", "attention"})
    stochastic = False

    class Config(StrategyConfig):
        ratio: float = 0.5

    def mask(self, ctx):
        received = ctx.attention["image_self"].mean(1).sum(1)      # [B, N]
        return topk_mask(received, self.config.ratio, self.valid(ctx))


def test_kit_warns_about_a_random_declaration_whose_masks_never_change():
    """Declaring stochastic = True too often breaks nothing (the generator is only required): a
    warning, not a failure; with no choice to make there is nothing to warn about."""
    with pytest.warns(ConformanceWarning, match=r"^frozen: declares stochastic = True and has a choice, but gave "
                                                r"identical masks under 6 seeds on each of the 2 contexts \(never drew from ctx.generator\)"):
        check_strategy(_Frozen())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_strategy(_Frozen({"ratio": 1.0}))  # no choice: nothing to vary


TIE_BREAKER = '''
import torch
from maskkit import hookimpl, MaskStrategy
from maskkit.core import StrategyConfig, topk_mask, uniform_noise

class TieBreak(MaskStrategy):
    """The tokens with the largest first feature; the generator's noise breaks ties only."""
    name = "tiebreak"
    requires = frozenset({"image_tokens"})
    stochastic = True   # it reads ctx.generator, as docs/plugins.md defines the flag
    class Config(StrategyConfig):
        ratio: float = 0.5
        quantum: float = 0.0   # > 0 rounds the scores, making ties

    def mask(self, ctx):
        s = ctx.image_tokens[..., 0]
        if self.config.quantum:
            s = torch.round(s / self.config.quantum)
        noise = uniform_noise(tuple(s.shape), ctx) * 1e-6   # far below any gap between distinct scores
        return topk_mask(s + noise, self.config.ratio, self.valid(ctx))

@hookimpl
def register_strategies(register):
    register(TieBreak)
'''


def _tiebreak_dist(tmp_path):
    root = tmp_path / "dist"
    root.mkdir()
    (root / "mk_tiebreak.py").write_text(TIE_BREAKER)
    info = root / "maskkit_tiebreak-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: maskkit-tiebreak\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[maskkit]\nmk_tiebreak = mk_tiebreak\n")
    return root


def test_kit_passes_a_tie_breaking_plugin_with_a_warning(tmp_path, monkeypatch):
    """Noise that breaks ties which do not arise at its default config."""
    monkeypatch.syspath_prepend(str(_tiebreak_dist(tmp_path)))
    sys.modules.pop("mk_tiebreak", None)
    with only_plugins("maskkit-tiebreak"):
        with pytest.warns(ConformanceWarning, match=r"tiebreak: .* \(reads ctx.generator but its masks did not change\)"):
            check_strategy("tiebreak")
        # with ties (scores rounded to whole numbers) the noise decides: no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_strategy({"tiebreak": {"quantum": 10.0}})
    # the CLI: one warning line, exit 0
    env = {**os.environ, "MASKKIT_LOAD_PLUGINS": "maskkit-tiebreak",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "dist"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "check", "tiebreak"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: tiebreak: declares stochastic = True and has a choice"), out.stderr
    assert "passes the maskkit conformance checks" in out.stdout and "1 warning above" in out.stdout
    tied = subprocess.run([sys.executable, "-m", "maskkit.cli", "check", '{"tiebreak": {"quantum": 10.0}}'],
                          capture_output=True, text=True, env=env)
    assert tied.returncode == 0 and tied.stderr == "", tied.stderr


def test_kit_fails_a_deterministic_declaration_that_is_not_true():
    with pytest.raises(AssertionError, match="sneaky: declares stochastic = False but its mask changes with the generator seed"):
        check_strategy(_Sneaky())


def test_kit_context_holds_image_padding_and_attention():
    ctx = make_context(**KIT_CONTEXTS[0])
    B, N = ctx.image_tokens.shape[:2]
    assert ctx.image_valid is not None and not ctx.image_valid.all() and not ctx.image_valid[0].all()
    assert ctx.image_valid.any(-1).all()
    assert set(ctx.attention) == set(ATTENTION_SHAPES)
    T = ctx.report_tokens.shape[1]
    assert ctx.attention["image_self"].shape == (B, 2, N, N) and ctx.attention["report_cross"].shape == (B, N, T)
    # the inputs older tests pinned are unchanged by the additions
    plain = make_context(image_pad=False, attention=False)
    assert torch.equal(plain.image_tokens, ctx.image_tokens) and torch.equal(plain.report_valid, ctx.report_valid)


def test_kit_fails_a_strategy_that_masks_image_padding():
    with pytest.raises(AssertionError, match="ignores_padding: masked a padding position"):
        check_strategy(_IgnoresImagePadding())


def test_kit_runs_a_strategy_that_reads_attention_at_any_N():
    for n in (5, 16, 196):
        check_strategy(_ReadsAttention(), N=n)
    extra = make_context(B=2, N=9, attention=False).replace(attention={"image_self": torch.rand(2, 1, 9, 9)})
    check_strategy(_ReadsAttention(), contexts=[extra])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "maskkit.cli", "check", *args], capture_output=True, text=True)


def test_cli_check_sets_n_and_passes_full_ratio():
    out = _cli('{"random": {"ratio": 1.0}}', "--n", "196", "--b", "2")
    assert out.returncode == 0, out.stderr
    assert "passes the maskkit conformance checks (B=2, N=196, T=12, seed=0, cpu)" in out.stdout
    if "blockwise" in NAMES:
        bad = _cli("blockwise", "--n", "10")
        assert bad.returncode == 2  # a MaskkitError: bad input, one line
        assert bad.stderr.strip() == "error: blockwise: 10 image tokens are not a square grid; set blockwise.grid: [H, W]"
        assert _cli("blockwise", "--n", "196").returncode == 0
