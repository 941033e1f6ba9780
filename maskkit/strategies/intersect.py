"""``intersect`` — eq. (10): the element-wise AND of the children's masks.

With the CausalMask as one child and a positional text mask ``P [B, T]`` as the other, the
result is ``[B, T, T]`` with ``mask[b, i, j] = causal[i, j] and P[b, j]``: query ``i`` cannot see
a *later* token ``j`` that was selected. ``MLM Full`` (P = every token) is then plain causal
captioning, which is what the paper says Table IV's Full row amounts to (docs/assumptions.md).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..core import CompositeStrategy, MaskContext, StrategyConfig, as_attention


class Intersect(CompositeStrategy):
    name = "intersect"
    description = "Element-wise AND of the children's masks; positional ∩ causal gives EntMLM's [B, T, T] (eq. 10)."

    class Config(StrategyConfig):
        of: list[Any] = Field(..., description="child strategies (names or {name: config})")

    def mask(self, ctx: MaskContext) -> torch.Tensor:
        masks = self.child_masks(ctx)
        if self.output == "attention":
            T = ctx.text_valid_mask().shape[1]
            masks = [as_attention(m, T) for m in masks]
        out = masks[0]
        for m in masks[1:]:
            out = out & m
        return out
