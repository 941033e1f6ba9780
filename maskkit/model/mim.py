"""The MAE-style pixel decoder of AttMIM (eq. 12), built from timm's ``Block`` and sin-cos positions."""

from __future__ import annotations

import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn


class MIMDecoder(nn.Module):
    """tokens ``[B, N, C]`` (masked ones replaced by a learned mask token) -> pixels ``[B, N, p*p]``."""

    def __init__(self, in_dim: int, grid: tuple[int, int], patch: int, width: int = 512, depth: int = 8, heads: int = 16) -> None:
        super().__init__()
        self.grid, self.patch = grid, patch
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        pos = build_sincos2d_pos_embed(list(grid), dim=width)  # [N, width], fixed as in MAE
        self.register_buffer("pos", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, patch * patch)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens: ``[B, N, C]`` encoder features; mask: ``[B, N]`` bool (True = hide). -> ``[B, N, p*p]``."""
        x = self.embed(tokens)
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype).expand_as(x), x)
        x = x + self.pos.to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))

    def forward_visible(self, visible: torch.Tensor, keep: torch.Tensor, N: int,
                        keep_valid: torch.Tensor | None = None) -> torch.Tensor:
        """MAE input placement: visible tokens ``[B, K, C]`` at patch indices ``keep [B, K]``;
        ``keep_valid [B, K]`` bool marks the real ones (padding slots become mask tokens)."""
        B, K, _ = visible.shape
        v = self.embed(visible)
        if keep_valid is not None:
            v = torch.where(keep_valid.unsqueeze(-1), v, self.mask_token.to(v.dtype).expand_as(v))
        x = self.mask_token.to(v.dtype).expand(B, N, -1).clone()
        x = x.scatter(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), v)
        x = x + self.pos.to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))

