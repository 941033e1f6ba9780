"""Shared maths of the attention strategies (eq. 4-6): attended features and their reduction.

The paper's ``M(A, lambda)`` takes "the top values in feature matrix A" (``A`` is ``[N, C]``)
without saying how a matrix becomes one score per token. Every reading maskkit offers is a
``reduction``; docs/assumptions.md records which is the default and why.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from ..core import StrategyConfig, masked_softmax

#: the values of an attention strategy's ``reduction`` (:func:`reduce`)
REDUCTIONS: tuple[str, ...] = ("l2", "received", "max_sim", "entry_count")
Reduction = Literal[REDUCTIONS]


class AttentionConfig(StrategyConfig):
    """The keys every attention strategy (eq. 4-6) takes."""

    ratio: float = Field(0.7, ge=0.0, le=1.0, description="fraction of valid image tokens to mask")
    reduction: Reduction = Field("max_sim", description="how A [B, N, D] becomes one score per token (docs/assumptions.md A1)")


def attend(query: torch.Tensor, keys: torch.Tensor, key_valid: torch.Tensor | None):
    """Eq. (4)-(6): ``A = softmax(Q K^T / sqrt(d_k)) K`` with padding keys excluded.

    query: ``[B, N, D]``; keys: ``[B, M, D]`` or ``[M, D]`` (shared by the batch);
    key_valid: ``[B, M]``, ``[M]`` or None. Returns (logits ``[B, N, M]``, A ``[B, N, D]``).
    A row whose keys are all padding attends to nothing (A = 0).
    """
    q = query.detach().float()
    k = keys.detach().float()
    logits = q @ k.transpose(-1, -2) / math.sqrt(k.shape[-1])
    kv = None if key_valid is None else key_valid.unsqueeze(-2)  # [B or 1, 1, M]
    A = masked_softmax(logits, kv) @ k
    return logits, A


def reduce(reduction: str, logits: torch.Tensor, A: torch.Tensor, *, query_valid: torch.Tensor,
           key_valid: torch.Tensor | None, ratio: float) -> torch.Tensor:
    """One score per query token, ``[B, N]`` float, from the attention of :func:`attend`.

    - ``l2``: the L2 norm of each row of A.
    - ``received``: the attention mass each image token receives when the keys query the
      image (softmax over the N image tokens, summed over valid keys) - MedIM's reading.
    - ``max_sim``: the highest scaled similarity of the token to any valid key.
    - ``entry_count``: the literal reading of M(A, lambda): how many of the token's entries are
      among the top ``ratio`` of all N x C entries of A (ties by the L2 norm).
    """
    B, N, M = logits.shape
    kv = None if key_valid is None else key_valid.reshape(-1, 1, M)
    if reduction == "l2":
        return A.norm(dim=-1)
    if reduction == "received":
        w = masked_softmax(logits, query_valid.unsqueeze(-1), dim=1)  # over image tokens
        if kv is not None:
            w = w * kv
        return w.sum(-1)
    if reduction == "max_sim":
        s = logits if kv is None else logits.masked_fill(~kv, float("-inf"))
        return s.amax(-1)
    if reduction == "entry_count":
        flat = A.masked_fill(~query_valid.unsqueeze(-1), float("-inf")).flatten(1)
        n = (query_valid.sum(-1) * A.shape[-1]).float()
        k = torch.round(n * ratio).long().clamp(1, flat.shape[1])
        thresh = torch.sort(flat, dim=1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
        count = (A >= thresh.unsqueeze(-1)).sum(-1).float()
        l2 = A.norm(dim=-1)
        return count + 0.999 * l2 / (l2.amax(-1, keepdim=True) + 1e-12)
    raise ValueError(f"unknown reduction '{reduction}'; expected one of {', '.join(REDUCTIONS)}")

