"""Segmentation fine-tuning on the ViT's patch tokens: a SETR-naive head, Dice at 1/10/100% of the labels.

The head (:class:`SETRNaive`) is SETR's "naive" decoder (Zheng et al., CVPR 2021, *Rethinking
Semantic Segmentation from a Sequence-to-Sequence Perspective*, §3.3 "SETR-Naive"): the patch tokens
``[B, N, C]`` reshaped to their ``G x G`` grid, a 1x1 convolution to 256 channels, BatchNorm, ReLU, a
1x1 convolution to one logit per patch, and bilinear upsampling by the patch size to the input's
``S x S`` pixels (A59: why this head and not MRM's / MaCo's UPerNet).

Trained with binary cross-entropy plus a soft Dice term on the pixels; scored at a probability of
:data:`THRESHOLD` (0.5, fixed in advance) with :func:`dice_scores`, per image:

- an image with lesion pixels: ``2 |P ∩ T| / (|P| + |T|)``;
- an image without: 1 when nothing is predicted, else 0 — the SIIM-ACR competition convention that
  GLoRIA (``marshuang80/gloria`` ``gloria/lightning/segmentation_model.py`` ``get_dice``) and MGCA
  (``HKU-MedAI/MGCA`` ``mgca/models/ssl_segmenter.py``) score SIIM with.

:func:`summarise` gives ``dice`` (the mean over every test image: the headline, as those
repositories report it, though they average per batch), ``dice_pos`` (images with a lesion),
``dice_neg`` (images without, i.e. the share predicted empty) and ``dice_pooled`` (one Dice over
every test pixel). Everything is vectorised over the batch, with no global RNG.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import SkipReport, decoded_batches
from ..errors import MaskkitError

#: a pixel is predicted lesion when its probability is above this (fixed in advance, not tuned)
THRESHOLD = 0.5
#: a pixel of the model's input is lesion when at least this fraction of its area is annotated
PIXEL_COVERAGE = 0.5
#: hidden channels of the SETR-naive head (SETR's own)
HIDDEN = 256
METRICS = ("dice", "dice_pos", "dice_neg", "dice_pooled")
#: what `eval finetune --task` trains (classification: maskkit.eval.finetune.run_finetune)
TASKS = ("classification", "segmentation")


class SETRNaive(nn.Module):
    """SETR-naive head: ``[B, N, C]`` patch tokens (row-major ``G x G`` grid) -> ``[B, S, S]``
    logits, ``S = G * patch``. 1x1 conv (C -> ``hidden``), BatchNorm, ReLU, 1x1 conv (-> 1),
    bilinear upsampling by ``patch``."""

    def __init__(self, dim: int, grid: tuple[int, int], patch: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.grid, self.patch = tuple(grid), patch
        self.proj = nn.Conv2d(dim, hidden, 1)
        self.norm = nn.BatchNorm2d(hidden)
        self.out = nn.Conv2d(hidden, 1, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, N, C = tokens.shape
        gh, gw = self.grid
        if N != gh * gw:
            raise MaskkitError(f"segmentation head: {N} tokens; expected the {gh}x{gw} = {gh * gw} patch tokens")
        x = tokens.transpose(1, 2).reshape(B, C, gh, gw)
        x = self.out(F.relu(self.norm(self.proj(x))))
        return F.interpolate(x, scale_factor=self.patch, mode="bilinear", align_corners=False)[:, 0]


def dice_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image Dice of ``pred`` and ``target`` (``[B, H, W]`` bool): ``dice`` ``[B]`` (an image
    without lesion pixels scores 1 when nothing is predicted, else 0), and the pixel counts
    ``inter``, ``pred_px``, ``target_px`` ``[B]`` (float)."""
    if pred.shape != target.shape:
        raise MaskkitError(f"dice: prediction {tuple(pred.shape)} and target {tuple(target.shape)}; expected one shape")
    p, t = pred.flatten(1).float(), target.flatten(1).float()
    inter, ps, ts = (p * t).sum(1), p.sum(1), t.sum(1)
    dice = torch.where(ts > 0, 2 * inter / (ps + ts).clamp_min(1), (ps == 0).float())
    return {"dice": dice, "inter": inter, "pred_px": ps, "target_px": ts}


def summarise(per: dict[str, torch.Tensor]) -> dict[str, float]:
    """``dice`` (mean over images), ``dice_pos`` / ``dice_neg`` (images with / without lesion
    pixels; NaN when there are none), ``dice_pooled`` (``2 Σ|P∩T| / (Σ|P| + Σ|T|)``, NaN when both
    are empty), ``n_test``, ``n_pos``, ``n_neg``."""
    d, pos = per["dice"].double(), per["target_px"] > 0
    nan = torch.tensor(math.nan, dtype=torch.float64)

    def mean(sel):
        return d[sel].mean() if bool(sel.any()) else nan

    den = (per["pred_px"] + per["target_px"]).sum().double()
    pooled = 2 * per["inter"].sum().double() / den if float(den) > 0 else nan
    vals = torch.stack([d.mean() if d.numel() else nan, mean(pos), mean(~pos), pooled,
                        torch.tensor(float(d.numel()), dtype=torch.float64), pos.sum().double(), (~pos).sum().double()])
    return dict(zip((*METRICS, "n_test", "n_pos", "n_neg"), vals.tolist()))


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the pixels plus a soft Dice loss over the batch's pixels (smoothed by 1)."""
    t = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, t)
    p = torch.sigmoid(logits)
    soft = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return bce + soft


@dataclass
class SegmentationResult:
    """One training split's result: ``summary`` (:func:`summarise`), and per test image its
    ``key``, ``dice``, and its lesion, predicted and overlapping pixels (``per_image``)."""

    fraction: str
    mode: str
    n_train: int
    sha256: str
    summary: dict[str, float]
    per_image: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


#: ``target_of(items) -> (keep [B] bool, targets [K, S, S] bool)``: the lesion mask of each decoded
#: sample that has one (``keep``), at the model's input resolution
TargetFn = Callable[[list[dict]], tuple[torch.Tensor, torch.Tensor]]


def run_segmentation(model, dataset, splits: dict, target_of: TargetFn, key_of: Callable[[dict], object],
                     mode: str = "probe", epochs: int = 20, lr: float = 1e-3, batch_size: int = 32, seed: int = 0,
                     device="cpu") -> list[SegmentationResult]:
    """Train a :class:`SETRNaive` head on the patch tokens per ``train_*`` split of ``splits``
    (``probe``: encoder frozen, its tokens computed once; ``finetune``: the image tower trained
    too) and score Dice on ``splits["test"]``.

    ``dataset`` holds every sample of the splits (:func:`~maskkit.eval.finetune.dataset_index` maps
    a split key to its row); ``target_of`` gives the masks of decoded samples, ``key_of`` a
    sample's split key (for the per-image rows). A split with no training image gives NaN and a
    warning. Options are checked as :func:`~maskkit.eval.finetune.run_finetune` checks them."""
    from .finetune import images_of, split_rows

    rows = split_rows(dataset, mode=mode, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    skips = SkipReport(max_fraction=1.0)

    def batches(idx, size):
        """(images, targets, keys) of the samples of ``idx`` that decode and have a mask."""
        for items in decoded_batches(dataset, idx, size, skips):
            keep, target = target_of(items)
            items = [s for s, k in zip(items, keep.tolist()) if k]
            if items:
                yield images_of(items, device), target.to(device), [key_of(s) for s in items]

    @torch.no_grad()
    def tokens(m, idx):
        toks, tgt, keys = [], [], []
        for x, t, k in batches(idx, 64):
            toks.append(m.encode_image(x)[1].float().cpu())
            tgt.append(t.cpu())
            keys += k
        if not toks:
            raise MaskkitError(f"no image of {len(idx)} in a split decodes with a mask ({len(skips.skipped)} skipped)")
        return torch.cat(toks), torch.cat(tgt), keys

    test_idx = rows(splits["test"]["ids"])
    frozen = None
    results = []
    for name in sorted(k for k in splits if k.startswith("train_")):
        frac = name.removeprefix("train_")
        tr_idx = rows(splits[name]["ids"])
        if not tr_idx:
            results.append(SegmentationResult(frac, mode, 0, splits[name]["sha256"], dict.fromkeys(METRICS, math.nan),
                                              warnings=[f"segmentation: the {frac} split holds no annotated training "
                                                        f"image; its Dice is undefined"]))
            continue
        m = copy.deepcopy(model).to(device)
        with torch.random.fork_rng(devices=[]):  # nn.Module init draws from the global RNG: seeded, then restored
            torch.manual_seed(seed)
            head = SETRNaive(m.embed_dim, m.grid, m.patch).to(device)
        g = torch.Generator().manual_seed(seed)
        if mode == "probe":
            m.eval()
            if frozen is None:
                frozen = tokens(m, test_idx)
            xtr, ttr, _ = tokens(m, tr_idx)
            opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
            head.train()
            for _ in range(epochs):
                perm = torch.randperm(len(xtr), generator=g)
                for s in range(0, len(perm), batch_size):
                    b = perm[s:s + batch_size]
                    loss = segmentation_loss(head(xtr[b].to(device)), ttr[b].to(device))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            xte, tte, keys = frozen
        else:
            params = list(m.clip.visual.parameters()) + list(head.parameters())
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
            for _ in range(epochs):
                m.train()
                head.train()
                perm = torch.randperm(len(tr_idx), generator=g).tolist()
                for x, t, _ in batches([tr_idx[j] for j in perm], batch_size):
                    loss = segmentation_loss(head(m.encode_image(x)[1]), t)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            m.eval()
            xte, tte, keys = tokens(m, test_idx)
        head.eval()
        with torch.no_grad():
            logits = torch.cat([head(xte[s:s + 64].to(device)).cpu() for s in range(0, len(xte), 64)])
        if not bool(torch.isfinite(logits).all()):
            raise MaskkitError(f"eval finetune --task segmentation: the {mode} on split {frac} diverged (non-finite "
                               f"logits after {epochs} epochs at --lr {lr:g}); lower --lr")
        per = dice_scores(logits > math.log(THRESHOLD / (1 - THRESHOLD)), tte)
        rows_out = [{"key": k, "dice": d, "lesion_pixels": int(t), "predicted_pixels": int(p), "overlap_pixels": int(i)}
                    for k, d, t, p, i in zip(keys, per["dice"].tolist(), per["target_px"].tolist(), per["pred_px"].tolist(),
                                             per["inter"].tolist())]
        results.append(SegmentationResult(frac, mode, len(tr_idx), splits[name]["sha256"], summarise(per), rows_out))
    return results


def restrict(splits: dict, keep: set) -> dict:
    """``splits`` with each split's ids cut to ``keep`` (the annotated samples), ``n`` and ``sha256`` recomputed."""
    from .finetune import checksum

    out = {}
    for name, s in splits.items():
        ids = [i for i in s["ids"] if i in keep]
        out[name] = {**s, "ids": ids, "n": len(ids), "sha256": checksum(ids)}
    return out


def mask_targets(masks: Sequence[np.ndarray | torch.Tensor], size: int, where: Sequence[str]) -> torch.Tensor:
    """``[B, S, S]`` bool of masks already at the model's ``S x S`` input (the phantoms' lesion
    masks); a mask of another size is one line naming its sample."""
    out = []
    for m, w in zip(masks, where):
        m = torch.as_tensor(m)
        if tuple(m.shape) != (size, size):
            raise MaskkitError(f"{w}: lesion mask of {'x'.join(map(str, m.shape))} pixels; expected the "
                               f"{size}x{size} of the model's input")
        out.append(m.bool())
    return torch.stack(out) if out else torch.zeros(0, size, size, dtype=torch.bool)
