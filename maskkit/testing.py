"""Conformance checks every mask strategy must pass; plugin authors run them on their own.

In a plugin's test suite::

    from maskkit.testing import check_strategy
    def test_my_strategy():
        check_strategy("blockwise")           # a registered name, a spec, or a built strategy

``check_strategy`` raises ``AssertionError`` with the property that failed: only what breaks a
run or the documented contract (docs/plugins.md). What is allowed but may be an oversight -
a strategy declaring ``stochastic = True`` whose masks do not change with the seed on the kit's
contexts - is a :class:`ConformanceWarning` (``maskkit check`` prints it and exits 0).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .compose import build_strategy
from .core import MaskContext, MaskStrategy


class ConformanceWarning(UserWarning):
    """A property the contract allows but that may be an oversight (the check still passes)."""


@contextmanager
def only_plugins(*names: str) -> Iterator[None]:
    """Load the built-ins and only the plugins ``names`` (distributions or entry points).

    Tests use it so that another plugin installed in the environment - a broken one, or one
    registering a clashing name - cannot change what they see (``MASKKIT_LOAD_PLUGINS``)::

        with only_plugins("maskkit-checker"):
            check_strategy("checkerboard")
    """
    from . import plugins

    old = os.environ.get("MASKKIT_LOAD_PLUGINS")
    os.environ["MASKKIT_LOAD_PLUGINS"] = ",".join(names)
    plugins.reset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MASKKIT_LOAD_PLUGINS", None)
        else:
            os.environ["MASKKIT_LOAD_PLUGINS"] = old
        plugins.reset()


def make_context(B: int = 3, N: int = 16, T: int = 12, P: int = 14, D: int = 8, *, seed: int = 0,
                 device: str | torch.device = "cpu", pad: bool = True, prompt_tokens_per: int = 0,
                 image_pad: bool = False, attention: bool = True) -> MaskContext:
    """A context holding every input a strategy may require.

    - report padding (when ``pad``: each row keeps a random length of at least ``T // 3``),
      entities on ~40% of the real report positions;
    - image padding when ``image_pad``: ``image_valid`` with the last tokens of rows padded
      (row 0 always loses at least one token when ``N > 1``);
    - pooled ``[P, D]`` prompt features, or ``[P, L, D]`` with ``prompt_valid`` when
      ``prompt_tokens_per = L > 0``;
    - when ``attention``: ``ctx.attention`` with every name of ``maskkit.core.ATTENTION_SHAPES``
      (softmax weights: ``image_self`` ``[B, 2, N, N]``, ``report_cross`` ``[B, N, T]``,
      ``report_self`` ``[B, T, T]``);
    - ``generator`` seeded with ``seed`` (the data come from a separate generator).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    data = torch.Generator().manual_seed(seed + 1)  # data independent of the mask generator
    lengths = torch.randint(max(1, T // 3), T + 1, (B,), generator=data) if pad else torch.full((B,), T)
    report_valid = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    entities = (torch.rand(B, T, generator=data) < 0.4) & report_valid
    prompt_shape = (P, prompt_tokens_per, D) if prompt_tokens_per else (P, D)
    prompt_valid = None
    if prompt_tokens_per:
        prompt_valid = torch.arange(prompt_tokens_per).unsqueeze(0) < torch.randint(1, prompt_tokens_per + 1, (P, 1), generator=data)
    image_tokens = torch.randn(B, N, D, generator=data)
    report_tokens = torch.randn(B, T, D, generator=data)
    prompt_tokens = torch.randn(*prompt_shape, generator=data)
    # drawn after the inputs above, so those are the same with or without these
    image_valid = None
    if image_pad:
        n_img = torch.randint(max(1, N // 2), N + 1, (B,), generator=data)
        n_img[0] = max(1, N - max(1, N // 4)) if N > 1 else 1
        image_valid = torch.arange(N).unsqueeze(0) < n_img.unsqueeze(1)
    maps = None
    if attention:
        maps = {
            "image_self": torch.randn(B, 2, N, N, generator=data).softmax(-1),
            "report_cross": torch.randn(B, N, T, generator=data).masked_fill(~report_valid.unsqueeze(1), float("-inf")).softmax(-1),
            "report_self": torch.randn(B, T, T, generator=data).softmax(-1),
        }
        maps = {k: v.nan_to_num(0.0).to(device) for k, v in maps.items()}
    return MaskContext(
        image_tokens=image_tokens.to(device),
        image_valid=None if image_valid is None else image_valid.to(device),
        report_tokens=report_tokens.to(device),
        report_valid=report_valid.to(device),
        prompt_tokens=prompt_tokens.to(device),
        prompt_valid=None if prompt_valid is None else prompt_valid.to(device),
        entities=entities.to(device),
        attention=maps,
        generator=g,
    )


#: the contexts ``check_strategy`` runs on: padded report + padded image + pooled prompts, and
#: no padding + per-token prompts
KIT_CONTEXTS: tuple[dict[str, Any], ...] = (
    {"pad": True, "image_pad": True, "prompt_tokens_per": 0},
    {"pad": False, "image_pad": False, "prompt_tokens_per": 4},
)


def _snapshot(ctx: MaskContext) -> list[torch.Tensor]:
    return [t.clone() for t in ctx._tensors()]


def check_mask(strategy: MaskStrategy, ctx: MaskContext, mask: torch.Tensor) -> None:
    """Shape, dtype, device, padding and (for ``ratio`` strategies) the exact count."""
    from .masking import MaskOutputError
    from .masking import check_mask as check_output

    name = strategy.name
    valid = strategy.valid(ctx)
    B, L = valid.shape
    attention = strategy.output == "attention"
    try:  # the check the model applies where a mask is used: type, dtype, shape
        check_output(mask, strategy, (B, L, L) if attention else (B, L), "conformance")
    except MaskOutputError as exc:
        raise AssertionError(str(exc)) from None
    assert mask.device == ctx.device, f"{name}: mask on {mask.device}, inputs on {ctx.device}"
    if attention:
        return
    assert not (mask & ~valid).any(), f"{name}: masked a padding position"
    assert not (mask & ~strategy.candidates(ctx)).any(), f"{name}: masked a position outside its candidates"
    want = strategy.expected_count(ctx)
    if want is not None:
        got = mask.sum(-1)
        assert torch.equal(got, want), f"{name}: masked {got.tolist()} per row, expected {want.tolist()}"


def has_choice(strategy: MaskStrategy, ctx: MaskContext) -> bool:
    """Whether a random strategy has anything to choose on ``ctx``.

    False when it is deterministic (``stochastic = False``), or when its exact count leaves no
    choice in any row (``ratio`` 0.0 or 1.0: 0 or all of the candidates); a composite without a
    fixed count has a choice when one of its children has. A strategy without a fixed count
    that declares itself random is taken at its word.
    """
    if not strategy.stochastic:
        return False
    want = strategy.expected_count(ctx)
    if want is not None:
        n = strategy.candidates(ctx).sum(-1)
        if bool(((want > 0) & (want < n)).any()):
            return True
        return False
    if strategy.composite:
        return any(has_choice(c, ctx) for c in strategy.children)
    return True


def _gen(device: str | torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def check_strategy(strategy: Any, *, device: str | torch.device = "cpu",
                   contexts: Iterable[MaskContext] = (), **context_kwargs: Any) -> None:
    """Run every conformance property on ``strategy`` (a name, a spec or a built strategy).

    It runs on the contexts of ``KIT_CONTEXTS`` built by :func:`make_context` (``context_kwargs``
    such as ``N=196`` or ``B=2`` go to it) and on any extra ``contexts`` a plugin author passes.

    Fails (``AssertionError``) on what breaks a run or the contract; warns
    (:class:`ConformanceWarning`, once) when a strategy declaring ``stochastic = True`` gave one
    mask under six seeds on every context where it has a choice: the contract defines the flag as
    "its mask reads ``ctx.generator``", and noise that only breaks ties which do not arise at
    this config reads it and changes nothing (declaring ``True`` too often only makes the
    generator required).
    """
    s = build_strategy(strategy) if not isinstance(strategy, MaskStrategy) else strategy
    ctxs = [make_context(device=device, **{**variant, **context_kwargs}) for variant in KIT_CONTEXTS]
    unchanged, drew = [], False  # contexts with a choice where 6 seeds gave one mask; generator used
    for ctx in [*ctxs, *contexts]:
        dev = ctx.device
        before = _snapshot(ctx)
        m1 = s(ctx)
        check_mask(s, ctx, m1)
        assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(ctx))), f"{s.name}: mutated its inputs"
        # determinism under one seed, with a fresh generator
        m2 = s(ctx.replace(generator=_gen(dev, 0)))
        m3 = s(ctx.replace(generator=_gen(dev, 0)))
        assert torch.equal(m2, m3), f"{s.name}: different masks under the same generator seed"
        gens = [_gen(dev, k) for k in range(1, 6)]
        fresh = gens[0].get_state()
        others = [s(ctx.replace(generator=g)) for g in gens]
        drew = drew or not torch.equal(gens[0].get_state(), fresh)
        if has_choice(s, ctx):
            if all(torch.equal(m2, o) for o in others):
                unchanged.append(ctx)
        elif not s.stochastic:
            assert all(torch.equal(m2, o) for o in others), (
                f"{s.name}: declares stochastic = False but its mask changes with the generator seed")
            m0 = s(ctx.replace(generator=None))
            assert torch.equal(m0, m2), f"{s.name}: declares stochastic = False but needs the generator"
        # no_grad and autograd-tracked inputs alike; masks never carry gradient
        with torch.no_grad():
            check_mask(s, ctx, s(ctx.replace(generator=_gen(dev, 0))))
        tracked = ctx.replace(
            image_tokens=None if ctx.image_tokens is None else ctx.image_tokens.clone().requires_grad_(True),
            report_tokens=None if ctx.report_tokens is None else ctx.report_tokens.clone().requires_grad_(True),
            generator=_gen(dev, 0),
        )
        m4 = s(tracked)
        assert not m4.requires_grad, f"{s.name}: the mask carries autograd history"
        assert torch.equal(m4, m2), f"{s.name}: result depends on requires_grad"
    n_choice = sum(has_choice(s, c) for c in [*ctxs, *contexts])
    if unchanged and len(unchanged) == n_choice:
        how = ("reads ctx.generator but its masks did not change" if drew else "never drew from ctx.generator")
        warnings.warn(f"{s.name}: declares stochastic = True and has a choice, but gave identical masks under 6 seeds "
                      f"on each of the {n_choice} contexts ({how}); fine if its noise only breaks ties that do not "
                      f"arise here, else check that the mask uses the generator's noise", ConformanceWarning, stacklevel=2)
