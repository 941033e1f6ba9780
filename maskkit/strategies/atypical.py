"""``atypical`` — mask the image tokens that differ most from the same position in the rest of the batch.

Not in the XLIP paper. Added for issue 12 (docs/assumptions.md A25): on the phantoms the paper's
attention scores (eq. 4-6) rank *tissue types* - every heart token alike in every image - so
lesion tokens fall in both tails of each score and a top-k of them is no better than random at
λ2 = 0.75. A lesion is a *deviation from the anatomy usual at that place*; this strategy scores
exactly that, with the batch as the estimate of the usual anatomy (the per-position patch
statistics of PaDiM, Defard et al., ICPR 2021, reduced to the mean, estimated on the batch):

    s[b, n] = || E_img[b, n] - mean_{b' != b, valid} E_img[b', n] ||_2

A row with no other valid row at position n (a batch of one) is scored against its own image:
``|| E_img[b, n] - mean_{n' valid} E_img[b, n'] ||_2``. It assumes roughly aligned images
(chest radiographs in one view; the phantoms are), and the batch must hold more than one image for
the estimate to mean anything; with a few images per batch the estimate is noisy.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from ..core import MaskContext, ScoredStrategy, StrategyConfig


class Atypical(ScoredStrategy):
    name = "atypical"
    modality = "image"
    output = "tokens"
    requires: ClassVar[frozenset[str]] = frozenset({"image_tokens"})
    description = "Mask the tokens farthest from the same position in the other images of the batch (PaDiM-style; not in the paper)."

    class Config(StrategyConfig):
        ratio: float = Field(0.7, ge=0.0, le=1.0, description="fraction of valid image tokens to mask")

    def scores(self, ctx: MaskContext) -> torch.Tensor:
        """``[B, N]`` float: the L2 distance (feature units) of each token from the leave-one-out
        batch mean at its position (from the image's own mean token when no other row is valid there)."""
        e = ctx.image_tokens.detach().float()                    # [B, N, D]
        v = ctx.image_valid_mask().to(e.dtype).unsqueeze(-1)     # [B, N, 1]
        ev = e * v
        total, count = ev.sum(0, keepdim=True), v.sum(0, keepdim=True)   # [1, N, D], [1, N, 1]
        others = count - v                                        # rows other than b valid at n
        loo = (total - ev) / others.clamp_min(1)
        own = ev.sum(1, keepdim=True) / v.sum(1, keepdim=True).clamp_min(1)  # [B, 1, D]
        ref = torch.where(others > 0, loo, own)
        return (e - ref).norm(dim=-1) * v.squeeze(-1)
