"""Conformance checks every mask strategy must pass; plugin authors run them on their own.

In a plugin's test suite::

    from maskkit.testing import check_strategy
    def test_my_strategy():
        check_strategy("blockwise")           # a registered name, a spec, or a built strategy

``check_strategy`` raises ``AssertionError`` with the property that failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .compose import build_strategy
from .core import MaskContext, MaskStrategy


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
                 device: str | torch.device = "cpu", pad: bool = True, prompt_tokens_per: int = 0) -> MaskContext:
    """A context holding every input, with report padding (when ``pad``) and entities."""
    g = torch.Generator(device=device).manual_seed(seed)
    data = torch.Generator().manual_seed(seed + 1)  # data independent of the mask generator
    lengths = torch.randint(max(1, T // 3), T + 1, (B,), generator=data) if pad else torch.full((B,), T)
    report_valid = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    entities = (torch.rand(B, T, generator=data) < 0.4) & report_valid
    prompt_shape = (P, prompt_tokens_per, D) if prompt_tokens_per else (P, D)
    prompt_valid = None
    if prompt_tokens_per:
        prompt_valid = torch.arange(prompt_tokens_per).unsqueeze(0) < torch.randint(1, prompt_tokens_per + 1, (P, 1), generator=data)
    return MaskContext(
        image_tokens=torch.randn(B, N, D, generator=data).to(device),
        report_tokens=torch.randn(B, T, D, generator=data).to(device),
        report_valid=report_valid.to(device),
        prompt_tokens=torch.randn(*prompt_shape, generator=data).to(device),
        prompt_valid=None if prompt_valid is None else prompt_valid.to(device),
        entities=entities.to(device),
        generator=g,
    )


def _snapshot(ctx: MaskContext) -> list[torch.Tensor]:
    return [t.clone() for t in ctx._tensors()]


def check_mask(strategy: MaskStrategy, ctx: MaskContext, mask: torch.Tensor) -> None:
    """Shape, dtype, device, padding and (for ``ratio`` strategies) the exact count."""
    name = strategy.name
    valid = strategy.valid(ctx)
    assert isinstance(mask, torch.Tensor), f"{name}: returned {type(mask).__name__}, not a tensor"
    assert mask.dtype == torch.bool, f"{name}: mask dtype {mask.dtype}, expected torch.bool"
    assert mask.device == ctx.device, f"{name}: mask on {mask.device}, inputs on {ctx.device}"
    B, L = valid.shape
    if strategy.output == "attention":
        assert tuple(mask.shape) == (B, L, L), f"{name}: attention mask shape {tuple(mask.shape)}, expected {(B, L, L)}"
        return
    assert tuple(mask.shape) == (B, L), f"{name}: token mask shape {tuple(mask.shape)}, expected {(B, L)}"
    assert not (mask & ~valid).any(), f"{name}: masked a padding position"
    assert not (mask & ~strategy.candidates(ctx)).any(), f"{name}: masked a position outside its candidates"
    want = strategy.expected_count(ctx)
    if want is not None:
        got = mask.sum(-1)
        assert torch.equal(got, want), f"{name}: masked {got.tolist()} per row, expected {want.tolist()}"


def check_strategy(strategy: Any, *, device: str | torch.device = "cpu", **context_kwargs: Any) -> None:
    """Run every conformance property on ``strategy`` (a name, a spec or a built strategy)."""
    s = build_strategy(strategy) if not isinstance(strategy, MaskStrategy) else strategy
    for pad, per in ((True, 0), (False, 4)):
        ctx = make_context(device=device, pad=pad, prompt_tokens_per=per, **context_kwargs)
        before = _snapshot(ctx)
        m1 = s(ctx)
        check_mask(s, ctx, m1)
        assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(ctx))), f"{s.name}: mutated its inputs"
        # determinism under one seed, with a fresh generator
        m2 = s(ctx.replace(generator=torch.Generator(device=device).manual_seed(0)))
        m3 = s(ctx.replace(generator=torch.Generator(device=device).manual_seed(0)))
        assert torch.equal(m2, m3), f"{s.name}: different masks under the same generator seed"
        if s.stochastic:
            others = [s(ctx.replace(generator=torch.Generator(device=device).manual_seed(k))) for k in range(1, 6)]
            assert any(not torch.equal(m2, o) for o in others), f"{s.name}: random but identical under 6 seeds"
        # no_grad and autograd-tracked inputs alike; masks never carry gradient
        with torch.no_grad():
            check_mask(s, ctx, s(ctx.replace(generator=torch.Generator(device=device).manual_seed(0))))
        tracked = ctx.replace(
            image_tokens=ctx.image_tokens.clone().requires_grad_(True),
            generator=torch.Generator(device=device).manual_seed(0),
        )
        m4 = s(tracked)
        assert not m4.requires_grad, f"{s.name}: the mask carries autograd history"
        assert torch.equal(m4, m2), f"{s.name}: result depends on requires_grad"
