"""``image_self`` — eq. (6): A_i = softmax(E_img E_img^T / sqrt(d)) E_img."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..core import MaskContext, ScoredStrategy
from ._attention import AttentionConfig, attend, reduce


class ImageSelf(ScoredStrategy):
    name = "image_self"
    modality = "image"
    requires: ClassVar[frozenset[str]] = frozenset({"image_tokens"})
    description = "Image self-attention (eq. 6): mask the image tokens that self-attention highlights most."

    Config = AttentionConfig

    def scores(self, ctx: MaskContext) -> torch.Tensor:
        valid = ctx.image_valid_mask()
        logits, A = attend(ctx.image_tokens, ctx.image_tokens, ctx.image_valid)
        return reduce(self.config.reduction, logits, A, query_valid=valid, key_valid=ctx.image_valid,
                      ratio=self.config.ratio)
