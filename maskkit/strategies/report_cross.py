"""``report_cross`` — eq. (4): A_r = softmax(E_img E_report^T / sqrt(d)) E_report, padding excluded."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..core import MaskContext, ScoredStrategy
from ._attention import AttentionConfig, attend, reduce


class ReportCross(ScoredStrategy):
    name = "report_cross"
    modality = "image"
    requires: ClassVar[frozenset[str]] = frozenset({"image_tokens", "report_tokens"})
    description = "Image-report cross-attention (eq. 4): mask the image tokens the paired report attends to."

    Config = AttentionConfig

    def scores(self, ctx: MaskContext) -> torch.Tensor:
        key_valid = ctx.text_valid_mask()
        logits, A = attend(ctx.image_tokens, ctx.report_tokens, key_valid)
        return reduce(self.config.reduction, logits, A, query_valid=ctx.image_valid_mask(),
                      key_valid=key_valid, ratio=self.config.ratio)
