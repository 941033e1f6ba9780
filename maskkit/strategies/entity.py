"""``entity`` — EntMLM's positional mask: a random λ3 subset of the NER entity positions (eq. 10)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from ..core import MaskContext, MaskStrategy, StrategyConfig, count_for_ratio, random_subset


class EntityMask(MaskStrategy):
    name = "entity"
    modality = "text"
    requires: ClassVar[frozenset[str]] = frozenset({"entities"})
    description = "Random subset (λ3) of the report positions that NER marked as medical entities (eq. 10: RandomSubSet(M_e, λ3))."

    class Config(StrategyConfig):
        ratio: float = Field(0.2, ge=0.0, le=1.0, description="λ3: fraction of entity positions to mask")

    def candidates(self, ctx: MaskContext) -> torch.Tensor:
        return ctx.entities & ctx.text_valid_mask()

    def mask(self, ctx: MaskContext) -> torch.Tensor:
        candidates = self.candidates(ctx)
        return random_subset(candidates, count_for_ratio(candidates, self.config.ratio), ctx)
