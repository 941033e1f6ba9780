"""``prompt_driven`` — eq. (5): A_p = softmax(E_img E_prompt^T / sqrt(d)) E_prompt (no report needed)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..core import MaskContext, ScoredStrategy
from ._attention import AttentionConfig, attend, reduce


class PromptDriven(ScoredStrategy):
    name = "prompt_driven"
    modality = "image"
    requires: ClassVar[frozenset[str]] = frozenset({"image_tokens", "prompt_tokens"})
    description = "Disease-prompt attention (eq. 5): mask image tokens most related to the disease prompts."

    Config = AttentionConfig

    def scores(self, ctx: MaskContext) -> torch.Tensor:
        keys, key_valid = ctx.prompt_tokens, None
        if keys.dim() == 3:  # per-token prompt features [P, L, D]: every valid prompt token is a key
            keys = keys.flatten(0, 1)
            key_valid = None if ctx.prompt_valid is None else ctx.prompt_valid.flatten()
        logits, A = attend(ctx.image_tokens, keys, key_valid)
        return reduce(self.config.reduction, logits, A, query_valid=ctx.image_valid_mask(),
                      key_valid=key_valid, ratio=self.config.ratio)
