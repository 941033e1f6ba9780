"""``union`` — eq. (7)-(8): the union of the children's masks, then a subset of final ratio λ2.

Each child masks ``child_ratio`` (λ1) of the tokens; the union ``M_b`` is taken; then exactly
``round(ratio * n_valid)`` tokens are kept: a random subset of ``M_b`` (``subset: uniform``, the
paper) or one drawn in proportion to the children's blended scores (``score_weighted``). When
``M_b`` is smaller than that count, the rest is filled from outside ``M_b`` (``fill: score`` takes
the highest blended scores, ``fill: random`` a uniform choice). With ``ratio: null`` the plain
union is returned. For text attention masks (``[B, T, T]``) the union is an element-wise OR.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..core import (CompositeStrategy, MaskContext, StrategyConfig, as_attention, count_for_ratio,
                    random_subset, rank_normalise, topk_count_mask, uniform_noise)


class Union(CompositeStrategy):
    name = "union"
    description = "Union of the children's masks (eq. 7), then a λ2 subset of it (eq. 8); OR for attention masks."

    class Config(StrategyConfig):
        of: list[Any] = Field(..., description="child strategies (names or {name: config})")
        child_ratio: float | None = Field(0.7, ge=0.0, le=1.0, description="λ1: ratio each child masks (null: children keep their own)")
        ratio: float | None = Field(0.75, ge=0.0, le=1.0, description="λ2: final fraction of valid tokens masked (null: the plain union)")
        subset: Literal["uniform", "score_weighted"] = Field("uniform", description="how the λ2 subset of the union is drawn")
        fill: Literal["score", "random"] = Field("score", description="how tokens are added when the union is smaller than λ2")

    def __init__(self, config=None, *, children, **kwargs) -> None:
        super().__init__(config, children=children, **kwargs)
        if self.output == "attention":
            explicit = self.config.model_fields_set & {"ratio", "child_ratio"}
            if explicit:
                raise ValueError(f"'{sorted(explicit)[0]}' applies to token masks, not to attention masks; remove it")

    @classmethod
    def child_defaults(cls, config: StrategyConfig) -> dict[str, Any]:
        return {} if config.child_ratio is None else {"ratio": config.child_ratio}

    def self_stochastic(self) -> bool:
        return self.output == "tokens" and self.config.ratio is not None

    def explain(self, ctx: MaskContext) -> dict[str, Any]:
        """Intermediate results: each child's mask and scores, the union, the blended score, the mask."""
        if self.output == "attention":
            masks = self.child_masks(ctx)
            T = ctx.text_valid_mask().shape[1]
            out = as_attention(masks[0], T)
            for m in masks[1:]:
                out = out | as_attention(m, T)
            return {"children": masks, "child_scores": [None] * len(masks), "mask": out, "scores": None}
        valid = self.valid(ctx)
        masks, scores = [], []
        for c in self.children:
            m, s = c.mask_and_scores(ctx)  # the child's own mask(), never a recomputed top-k
            masks.append(m)
            scores.append(s)
        union = torch.stack(masks).any(0)
        parts = [rank_normalise(s, valid) if s is not None else m.float() for s, m in zip(scores, masks)]
        blended = torch.stack(parts).mean(0)
        out = {"children": masks, "child_scores": scores, "union": union, "blended": blended, "scores": blended}
        if self.config.ratio is None:
            out["mask"] = union
            return out
        k = count_for_ratio(valid, self.config.ratio)
        weights = blended if self.config.subset == "score_weighted" else None
        inside = random_subset(union, k, ctx, weights=weights)
        short = k - inside.sum(-1)
        if self.config.fill == "score" and any(s is not None for s in scores):
            fill_key = blended
        else:
            fill_key = uniform_noise(tuple(valid.shape), ctx)
        extra = topk_count_mask(fill_key, short, valid & ~union)
        out["mask"] = inside | extra
        return out

    def mask(self, ctx: MaskContext) -> torch.Tensor:
        return self.explain(ctx)["mask"]
