"""``random`` — a uniform random subset of the valid tokens (MAE's masking)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..core import MaskContext, MaskStrategy, StrategyConfig, declared, topk_mask, uniform_noise


class RandomMask(MaskStrategy):
    name = "random"
    modality = declared("image", "text")  # the config's `modality` picks one per instance
    description = "Uniform random subset of the valid tokens (MAE; not in the paper's equations); image or text."

    class Config(StrategyConfig):
        ratio: float = Field(0.75, ge=0.0, le=1.0, description="fraction of valid tokens to mask")
        modality: Literal["image", "text"] = Field("image", description="mask image tokens or report tokens")

    @property
    def all_requires(self) -> frozenset[str]:
        return frozenset({"image_tokens"} if self.modality == "image" else {"report_valid"})

    def mask(self, ctx: MaskContext) -> torch.Tensor:
        valid = self.valid(ctx)
        return topk_mask(uniform_noise(tuple(valid.shape), ctx), self.config.ratio, valid)
