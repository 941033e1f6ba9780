"""The MAE-style pixel decoder of AttMIM (eq. 12), built from timm's ``Block`` and sin-cos positions.

Three ways to run it, one set of weights: :meth:`MIMDecoder.forward` (``mim.placement=feature``:
every encoded token, masked ones replaced), :meth:`~MIMDecoder.forward_visible` (MAE: the
visible tokens scattered among mask tokens, all ``N`` run through every block) and
:meth:`~MIMDecoder.forward_masked` (MILAN's prompting decoder, ``mim.decoder_queries=masked``:
only the masked tokens are queries; the visible ones are fixed keys and values).
"""

from __future__ import annotations

import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
import torch.nn.functional as F
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
        self.grad_checkpointing = False  # XLIP.set_grad_checkpointing (train.grad_checkpointing)

    def _run(self, blk, *args):
        """One block, its activations recomputed in the backward under ``grad_checkpointing``."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(blk, *args, use_reentrant=False)
        return blk(*args)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens: ``[B, N, C]`` encoder features; mask: ``[B, N]`` bool (True = hide). -> ``[B, N, p*p]``."""
        x = self.embed(tokens)
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype).expand_as(x), x)
        x = x + self.pos.to(x.dtype)
        for blk in self.blocks:
            x = self._run(blk, x)
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
            x = self._run(blk, x)
        return self.pred(self.norm(x))


    def forward_masked(self, visible: torch.Tensor, keep: torch.Tensor, keep_valid: torch.Tensor | None,
                       mask: torch.Tensor) -> torch.Tensor:
        """MILAN's prompting decoder (Hou et al., 2022): only the masked tokens are queries.

        ``visible`` ``[B, K, C]`` encoder tokens at patch indices ``keep`` ``[B, K]`` (``keep_valid``
        ``[B, K]`` bool marks real ones; None: all), ``mask`` ``[B, N]`` bool (True = masked).
        Each block's queries are the masked tokens (mask token + position); its keys and values are
        the visible tokens (embedded + position, the same at every block: they are not updated)
        and the masked tokens; attention, then the block's MLP, on the masked tokens only. Uses
        the weights of the MAE decoder (the same timm ``Block`` modules), at ``12·M + 2·(K + M)``
        instead of ``12·N`` width² multiply-adds per block (``M`` masked tokens). Returns ``[B, N, p*p]``:
        predictions at the masked positions, 0 at the visible ones (the loss reads masked ones only).
        """
        B, K, _ = visible.shape
        N = mask.shape[1]
        dtype = visible.dtype
        ctx = self.embed(visible)
        pos = self.pos.to(ctx.dtype).expand(B, -1, -1)
        W = ctx.shape[-1]
        ctx = ctx + torch.gather(pos, 1, keep.unsqueeze(-1).expand(-1, -1, W))
        hid, hid_valid = hidden_positions(mask)                       # [B, M] hidden first, in position order
        M = hid.shape[1]
        q = self.mask_token.to(ctx.dtype).expand(B, M, W) + torch.gather(pos, 1, hid.unsqueeze(-1).expand(-1, -1, W))
        bias = None                                                  # no padding: no mask
        if keep_valid is not None or hid_valid is not None:
            ones = torch.ones(B, 1, dtype=torch.bool, device=mask.device)
            keys = torch.cat([ones.expand(B, K) if keep_valid is None else keep_valid,
                              ones.expand(B, M) if hid_valid is None else hid_valid], 1)  # [B, K + M]
            bias = torch.zeros(keys.shape, dtype=ctx.dtype, device=ctx.device).masked_fill(~keys, float("-inf"))[:, None, None, :]
        for blk in self.blocks:
            q = self._run(_masked_block, blk, q, ctx, bias)
        out = self.pred(self.norm(q))
        if hid_valid is not None:
            out = out * hid_valid.unsqueeze(-1).to(dtype)           # padding slots write 0
        full = out.new_zeros(B, N, out.shape[-1])
        return full.scatter(1, hid.unsqueeze(-1).expand(-1, -1, out.shape[-1]), out)


def _masked_block(blk, q: torch.Tensor, ctx: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One timm ``Block`` of :meth:`MIMDecoder.forward_masked`: attention of the masked queries ``q``
    to ``[ctx, q]``, then the MLP, on the queries only."""
    q = q + blk.ls1(_attend(blk.attn, blk.norm1(q), blk.norm1(ctx), bias))
    return q + blk.ls2(blk.mlp(blk.norm2(q)))


def _attend(attn, q_in: torch.Tensor, ctx_in: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """timm ``Attention`` ``attn`` with queries from ``q_in`` ``[B, M, W]`` and keys/values from
    ``[ctx_in, q_in]`` ``[B, K + M, W]``; ``bias`` ``[B, 1, 1, K + M]`` additive (-inf: no key) or None."""
    B, M, W = q_in.shape
    H = attn.num_heads
    wq, wk, wv = attn.qkv.weight.chunk(3)
    bq, bk, bv = attn.qkv.bias.chunk(3) if attn.qkv.bias is not None else (None, None, None)
    kv_in = torch.cat([ctx_in, q_in], 1)
    L = kv_in.shape[1]
    q = F.linear(q_in, wq, bq).view(B, M, H, -1).transpose(1, 2)
    k = F.linear(kv_in, wk, bk).view(B, L, H, -1).transpose(1, 2)
    v = F.linear(kv_in, wv, bv).view(B, L, H, -1).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
    return attn.proj(attn.norm(o.transpose(1, 2).reshape(B, M, -1)))


def hidden_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(positions [B, M], valid [B, M] or None)`` of the masked tokens of ``mask`` ``[B, N]``
    (True = masked), as :func:`visible_positions` gives the visible ones."""
    return visible_positions(~mask)


def visible_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(keep [B, K], keep_valid [B, K])``: the visible (False) positions of ``mask`` ``[B, N]``,
    each row's in position order then padded with its masked positions (``keep_valid`` False);
    ``K`` the largest visible count. ``keep_valid`` is None when every row keeps ``K`` (a fixed
    ratio: no padding, so attention runs without a mask, on its fast path). One host sync."""
    n_vis = (~mask).sum(1)
    lo, K = torch.stack([n_vis.min(), n_vis.max()]).tolist() if mask.shape[0] else (0, 0)
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
    keep = order[:, :K]
    return keep, (None if lo == K else torch.arange(K, device=mask.device)[None, :] < n_vis[:, None])
