"""``causal`` — the decoder's upper-triangular CausalMask, ``[B, T, T]``, ``True`` = may not attend."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..core import MaskContext, MaskStrategy


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[T, T]`` bool: ``True`` above the diagonal (query ``i`` may not see a later key ``j > i``)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)


class CausalMask(MaskStrategy):
    name = "causal"
    modality = "text"
    output = "attention"
    stochastic = False
    requires: ClassVar[frozenset[str]] = frozenset({"report_valid"})
    description = "Upper-triangular CausalMask of the text decoder ([B, T, T]; eq. 10); combine it with intersect/union."

    def mask(self, ctx: MaskContext) -> torch.Tensor:
        valid = ctx.text_valid_mask()
        B, T = valid.shape
        return causal_mask(T, valid.device).expand(B, T, T)
