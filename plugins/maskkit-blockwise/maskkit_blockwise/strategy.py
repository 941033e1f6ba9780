"""BEiT-style block-wise masking, batched: ``[B, N]`` bool masks of rectangular patch blocks.

The strategy class; the hook that registers it is in ``__init__.py``, which imports this module
(and so torch) only when maskkit asks for strategies."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field

from maskkit.errors import MaskkitError
from maskkit.core import MaskContext, MaskStrategy, StrategyConfig, topk_mask, uniform_noise


class BlockwiseMask(MaskStrategy):
    name = "blockwise"
    modality = "image"
    requires: ClassVar[frozenset[str]] = frozenset({"image_tokens"})
    description = "BEiT block-wise masking: random rectangles of patches until the ratio is met (plugin)."

    class Config(StrategyConfig):
        ratio: float = Field(0.75, ge=0.0, le=1.0, description="fraction of image tokens to mask")
        n_blocks: int = Field(32, ge=1, description="rectangles drawn per sample")
        min_patches: int = Field(4, ge=1, description="smallest rectangle area, in patches")
        max_patches: int | None = Field(None, ge=1, description="largest area (default: 30% of the grid)")
        max_aspect: float = Field(3.0, ge=1.0, description="largest height/width ratio of a rectangle")
        grid: tuple[int, int] | None = Field(None, description="patch grid (H, W); default: square sqrt(N)")

    def _grid(self, N: int) -> tuple[int, int]:
        if self.config.grid is not None:
            H, W = self.config.grid
            if H * W != N:
                raise MaskkitError(f"blockwise.grid {H}x{W} does not hold the {N} image tokens")
            return H, W
        side = math.isqrt(N)
        if side * side != N:
            raise MaskkitError(f"blockwise: {N} image tokens are not a square grid; set blockwise.grid: [H, W]")
        return side, side

    def mask(self, ctx: MaskContext) -> torch.Tensor:
        """image_tokens: ``[B, N, D]`` -> ``[B, N]`` bool."""
        B, N = ctx.image_tokens.shape[:2]
        H, W = self._grid(N)
        K, cfg = self.config.n_blocks, self.config
        lo = float(min(cfg.min_patches, N))
        hi = float(max(lo, cfg.max_patches or round(0.3 * N)))
        u = uniform_noise((5, B, K), ctx)
        area = lo + (hi - lo) * u[0]
        aspect = torch.exp((2 * u[1] - 1) * math.log(cfg.max_aspect))
        h = torch.sqrt(area * aspect).round().clamp(1, H)
        w = torch.sqrt(area / aspect).round().clamp(1, W)
        top = (u[2] * (H - h + 1)).floor()
        left = (u[3] * (W - w + 1)).floor()
        rows = torch.arange(H, device=ctx.device).repeat_interleave(W).float()  # [N]
        cols = torch.arange(W, device=ctx.device).repeat(H).float()
        inside = ((rows >= top[..., None]) & (rows < (top + h)[..., None])
                  & (cols >= left[..., None]) & (cols < (left + w)[..., None]))  # [B, K, N]
        covered = inside.any(1)
        first = torch.where(covered, inside.float().argmax(1).float(), float(K))  # [B, N]
        key = -first + 0.999 * uniform_noise((B, N), ctx)
        return topk_mask(key, cfg.ratio, ctx.image_valid_mask())

