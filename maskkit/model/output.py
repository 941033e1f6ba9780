"""What :class:`maskkit.model.XLIP` returns: features and masks, never losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class XLIPOutput:
    """The model's forward output for a batch of ``B`` rows (paired and image-only together).

    Shapes: C embedding width, N image tokens, P = patch² pixels per patch, T text positions,
    K the number of EntMLM target positions in this batch, V the vocabulary size.

    - ``image_features`` ``[B, C]``: pooled, projected image features (full image, unmasked; in
      ``mim.placement=sparse`` of its low-resolution view; with ``model.patch_dropout`` in
      training, of the kept patches)
    - ``text_features`` ``[B, C]``: pooled report features (rows with ``paired`` False encode an
      empty report; the alignment loss ignores them)
    - ``paired`` ``[B]`` bool: the row has a report
    - ``text_key`` ``[B]`` long: report identity, a hash of the token ids below 2**52
      (:func:`maskkit.model.xlip.report_keys`; the same in every batch and rank); rows with equal
      keys hold the same report; -1 for a row without one
    - ``logit_scale`` scalar: the learnable log inverse temperature
    - ``mim_pred``, ``mim_target`` ``[B, N, P]``, ``mim_mask`` ``[B, N]`` bool (True = masked):
      AttMIM's reconstruction (None without an image mask; with ``mim.decoder_queries=masked``
      ``mim_pred`` is 0 at the visible positions, which no loss reads)
    - ``mlm_logits`` ``[K, V]``, ``mlm_labels`` ``[K]`` long: EntMLM's predictions at the target
      positions (None without a text mask); ``mlm_selected`` ``[B, T]`` bool the positions drawn
    """

    image_features: torch.Tensor
    text_features: torch.Tensor
    paired: torch.Tensor
    text_key: torch.Tensor
    logit_scale: torch.Tensor
    mim_pred: torch.Tensor | None = None
    mim_target: torch.Tensor | None = None
    mim_mask: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    mlm_labels: torch.Tensor | None = None
    mlm_selected: torch.Tensor | None = None
