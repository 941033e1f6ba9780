"""``report_cross`` — eq. (4): A_r = softmax(E_img E_report^T / sqrt(d)) E_report, padding excluded."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from ..core import MaskContext, ScoredStrategy, StrategyConfig
from ._attention import Reduction, attend, reduce


class ReportCross(ScoredStrategy):
    name = "report_cross"
    modality = "image"
    requires: ClassVar[frozenset[str]] = frozenset({"image_tokens", "report_tokens"})
    description = "Image-report cross-attention (eq. 4): mask the image tokens the paired report attends to."

    class Config(StrategyConfig):
        ratio: float = Field(0.7, ge=0.0, le=1.0, description="fraction of valid image tokens to mask")
        reduction: Reduction = Field("max_sim", description="how A [B, N, D] becomes one score per token (docs/assumptions.md A1)")

    def scores(self, ctx: MaskContext) -> torch.Tensor:
        key_valid = ctx.text_valid_mask()
        logits, A = attend(ctx.image_tokens, ctx.report_tokens, key_valid)
        return reduce(self.config.reduction, logits, A, query_valid=ctx.image_valid_mask(),
                      key_valid=key_valid, ratio=self.config.ratio)
