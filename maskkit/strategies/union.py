"""``union`` — eq. (7)-(8): the union of the children's masks, then a subset of final ratio λ2.

Each child masks ``child_ratio`` (λ1) of the tokens; the union ``M_b`` is taken; then exactly
``round(ratio * n_valid)`` tokens are kept: a random subset of ``M_b`` (``subset: uniform``, the
paper) or one drawn in proportion to the children's blended scores (``score_weighted``). When
``M_b`` is smaller than that count, the rest is filled from outside ``M_b`` (``fill: score`` takes
the highest blended scores, ``fill: random`` a uniform choice). With ``ratio: null`` the plain
union is returned. For text attention masks (``[B, T, T]``) the union is an element-wise OR.

Options added for issue 12 (not in the paper; equations in docs/strategies.md, reasons in
docs/assumptions.md A25): ``subset: ranked`` draws the λ2 subset as a Gumbel top-k over the
blended score with a ``temperature`` (0: deterministic top-k; the uniform subset is its infinite
limit), ``blend: max`` combines the children's ranks as a soft OR (the union's own logic) instead
of their mean, and ``weights`` weighs the children in the blend.
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
        subset: Literal["uniform", "score_weighted", "ranked"] = Field("uniform", description="how the λ2 subset of the union is drawn: uniform (the paper, eq. 8), score_weighted (without replacement in proportion to the blended child score: Gumbel-top-k) or ranked (Gumbel top-k over the blended score at `temperature`; not in the paper, A25)")
        fill: Literal["score", "random"] = Field("score", description="when the union holds fewer than round(λ2·n_valid) tokens: add the highest-blended-score tokens outside it (score) or uniformly random ones (random)")
        temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="subset ranked: Gumbel noise scale τ on the blended score in [0, 1] (0: deterministic top-k; larger: closer to uniform)")
        blend: Literal["mean", "max"] = Field("mean", description="how the children's rank-normalised scores combine: mean, or max (soft OR)")
        weights: list[float] | None = Field(None, description="one non-negative blend weight per child (null: equal)")

    def __init__(self, config=None, *, children, **kwargs) -> None:
        super().__init__(config, children=children, **kwargs)
        if self.output == "attention":
            explicit = self.config.model_fields_set & {"ratio", "child_ratio"}
            if explicit:
                raise ValueError(f"'{sorted(explicit)[0]}' applies to token masks, not to attention masks; remove it")
        c = self.config
        if c.subset == "ranked" and c.temperature == 0 and c.fill == "random" and "fill" in c.model_fields_set:
            raise ValueError("fill: random with subset: ranked and temperature 0 would make only the shortfall random; "
                             "use fill: score (deterministic) or a temperature > 0")
        w = self.config.weights
        if w is not None:
            if len(w) != len(self.children):
                raise ValueError(f"weights: {len(w)} weights for {len(self.children)} children in 'of'; give one per child")
            if any(x < 0 for x in w) or not any(x > 0 for x in w):
                raise ValueError(f"weights: expected non-negative weights, at least one positive; got {list(w)}")

    @classmethod
    def child_defaults(cls, config: StrategyConfig) -> dict[str, Any]:
        return {} if config.child_ratio is None else {"ratio": config.child_ratio}

    def self_stochastic(self) -> bool:
        c = self.config
        deterministic = c.subset == "ranked" and c.temperature == 0 and c.fill == "score"
        return self.output == "tokens" and c.ratio is not None and not deterministic

    def blend(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``[B, N]`` blended score from the children's rank-normalised scores (each ``[B, N]`` in [0, 1]):
        the (weighted) mean, or with ``blend: max`` the (weighted) maximum."""
        stacked = torch.stack(parts)                                    # [C, B, N]
        w = self.config.weights
        if w is None:
            return stacked.mean(0) if self.config.blend == "mean" else stacked.amax(0)
        wt = torch.tensor(w, dtype=stacked.dtype, device=stacked.device).view(-1, 1, 1)
        if self.config.blend == "mean":
            return (stacked * wt).sum(0) / wt.sum()
        return (stacked * wt).amax(0)

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
        blended = self.blend(parts)
        out = {"children": masks, "child_scores": scores, "union": union, "blended": blended, "scores": blended}
        if self.config.ratio is None:
            out["mask"] = union
            return out
        k = count_for_ratio(valid, self.config.ratio)
        if self.config.subset == "ranked":
            key = blended
            if self.config.temperature > 0:
                u = uniform_noise(tuple(valid.shape), ctx).clamp(1e-20, 1 - 1e-7)
                key = blended + self.config.temperature * -torch.log(-torch.log(u))  # Gumbel(0, 1)
            inside = topk_count_mask(key, k, union)
        else:
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
