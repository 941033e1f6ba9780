"""EntMLM's multimodal text decoder (CoCa-style): masked self-attention + cross-attention to image tokens."""

from __future__ import annotations

import torch
from torch import nn


class TextDecoder(nn.Module):
    """E_report ``[B, T, C]`` + image tokens ``[B, N, C]`` -> hidden states ``[B, T, C]``;
    ``head`` maps a hidden state to next-token logits over the vocabulary."""

    def __init__(self, dim: int, vocab: int, context: int, layers: int = 3, heads: int = 8) -> None:
        super().__init__()
        if dim % heads:
            heads = max(h for h in range(1, heads + 1) if dim % h == 0)
        self.heads = heads
        layer = nn.TransformerDecoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(dim))
        self.pos = nn.Parameter(torch.zeros(1, context, dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.pos, std=0.01)

    def forward(self, text: torch.Tensor, image: torch.Tensor, attn_mask: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        """attn_mask: ``[B, T, T]`` bool, True = may not attend (maskkit's convention, also
        nn.MultiheadAttention's); key_padding: ``[B, T]`` bool, True = padding."""
        B, T, _ = text.shape
        # a query row that may attend to nothing would give NaN: let it see itself
        eye = torch.eye(T, dtype=torch.bool, device=text.device)
        blocked = attn_mask | key_padding.unsqueeze(1)
        blocked = blocked & ~eye
        m = blocked.repeat_interleave(self.heads, 0)  # [B * heads, T, T]
        return self.layers(text + self.pos[:, :T].to(text.dtype), image, tgt_mask=m, tgt_is_causal=False)

