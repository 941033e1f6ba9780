"""Zero-shot grounding metrics of a patch-level similarity map against annotated regions.

Shapes: ``B`` images (or image-phrase pairs), ``N = G * G`` patches in row-major order.

- ``sim``: ``[B, N]`` float, the similarity of each patch token to the finding's prompt (or the
  MS-CXR phrase); any scale (cosine similarities, logits).
- ``region``: ``[B, N]`` float in ``[0, 1]``, the fraction of each patch the annotated region
  covers (:func:`maskkit.data.regions.patch_coverage`; a bool mask works too).

The metrics are those of **a map upsampled to the image by nearest neighbour** (each patch's value
on all of its pixels) compared with the region's pixels, computed exactly on the patch grid by
weighting each patch by the fraction of it the region covers — what MedKLIP does by repeating its
14 x 14 map 16 times per side before scoring against the 224 x 224 box mask.

- **Pointing game** (MedKLIP, ``Sample_Zero-Shot_Grounding_RSNA/test.py`` ``score_cal``): a hit
  when the patch where the map is maximal overlaps the region (MedKLIP: an argmax pixel inside the
  box mask). **Ties** follow every rank metric of ``maskkit.eval`` (:mod:`maskkit.eval.ties`): the
  expected hit when the tie is broken at random, i.e. the share of the tied maximal patches that
  overlap the region (MedKLIP's ``pred_map == max`` counts a hit when *any* does, so a constant
  map scores 1; here it scores the share of patches the region touches).
- **IoU and Dice at a threshold fixed in advance**: MedKLIP thresholds its softmax attention over
  the 196 patches at 0.008 (about 1.6 times the uniform 1/196) — a constant that only has a meaning
  for that map. maskkit's maps are cosine similarities, so each map is **min-max normalised per
  image** to ``[0, 1]`` and patches at **>= 0.5** are the prediction (:data:`THRESHOLD`), decided
  before any evaluation; a constant map predicts nothing. ``IoU = |P ∩ R| / |P ∪ R|``,
  ``Dice = 2 |P ∩ R| / (|P| + |R|)`` in pixels (MedKLIP's formulas).
- **CNR** as BioViL defines it (Boecking et al., "Making the Most of Text Semantics to Improve
  Biomedical Vision-Language Processing", ECCV 2022, phrase grounding on MS-CXR):
  ``CNR = |μ_in − μ_out| / sqrt(σ²_in + σ²_out)``, the mean and variance of the similarity inside
  the boxes and outside them; no threshold. Population variances (pixel-weighted); invariant to
  any affine rescaling of the map. 0 when both variances and the contrast are 0; NaN when the
  region covers nothing or everything.

A row whose region is empty is not scored (NaN in every metric, left out of the means): grounding
is scored on positive images only, as MedKLIP scores ``label == 1`` only.

Baselines: :func:`random_map` (uniform noise from a seeded ``torch.Generator``) and
:func:`centre_prior` (the negative distance of each patch centre from the image centre).
Everything is vectorised over the batch; nothing calls ``.item()``; no global RNG.
"""

from __future__ import annotations

import math

import torch

from ..errors import ContextError

#: The fixed threshold on the per-image min-max normalised map (IoU, Dice).
THRESHOLD = 0.5
METRICS = ("pointing", "iou", "dice", "cnr")


def patch_similarity(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The similarity map that grounding scores: ``[B, N]`` float32 cosine similarity of each image's
    projected patch tokens (``tokens`` ``[B, N, C]``: E_img, eq. 1) to a text embedding (``text``
    ``[C]``, or ``[B, C]`` one per image, L2-normalised: :func:`maskkit.eval.zeroshot.text_embeddings`)."""
    if tokens.dim() != 3 or text.shape[-1] != tokens.shape[-1] or text.dim() not in (1, 2):
        raise ContextError(f"patch_similarity: tokens {tuple(tokens.shape)} and text {tuple(text.shape)}; expected "
                           f"[B, N, C] and [C] or [B, C]")
    t = text.to(tokens.device, torch.float32)
    t = t.expand(tokens.shape[0], -1) if t.dim() == 1 else t
    return torch.einsum("bnc,bc->bn", torch.nn.functional.normalize(tokens.float(), dim=-1), t)


def _check(sim: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    if sim.dim() != 2 or not sim.is_floating_point():
        raise ContextError(f"sim: expected a [B, N] float tensor, got {tuple(sim.shape)} {sim.dtype}")
    if region.shape != sim.shape:
        raise ContextError(f"region: shape {tuple(region.shape)}; expected the similarity map's {tuple(sim.shape)}")
    return region.to(torch.float64)


def _no_region(region: torch.Tensor) -> torch.Tensor:
    return region.sum(1) <= 0


def normalise(sim: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` min-max normalised per row to ``[0, 1]``; a constant row becomes all 0."""
    lo = sim.amin(1, keepdim=True)
    span = sim.amax(1, keepdim=True) - lo
    return torch.where(span > 0, (sim - lo) / span.where(span > 0, torch.ones_like(span)), torch.zeros_like(sim))


def threshold_map(sim: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """``[B, N]`` bool prediction: min-max normalised map at least ``threshold`` (in ``(0, 1]``)."""
    if not 0.0 < threshold <= 1.0:
        raise ContextError(f"threshold {threshold}; expected a fraction in (0, 1] of the normalised map")
    return normalise(sim) >= threshold


def pointing_game(sim: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``[B]`` float64: the share of the patches where ``sim`` is maximal that overlap the region -
    1.0 or 0.0 for a single maximum, the expected hit of a random tie-break for several
    (:mod:`maskkit.eval.ties`; a constant map scores the share of patches the region touches) -
    and NaN when the region is empty."""
    r = _check(sim, region)
    top = (sim == sim.amax(1, keepdim=True)).to(torch.float64)
    hit = (top * (r > 0)).sum(1) / top.sum(1).clamp_min(1)  # relevant / (tied + relevant): ties.hit_probability(0, ., ., 1)
    return hit.masked_fill(_no_region(r), math.nan)


def iou_dice(pred: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B], [B])`` float64 IoU and Dice of the bool prediction ``pred`` ``[B, N]`` with the
    region's pixels (``region`` fractions; areas in patches): ``I = Σ pred·region``,
    ``IoU = I / (|P| + |R| − I)``, ``Dice = 2I / (|P| + |R|)``. NaN when the region is empty."""
    r = _check(pred.to(torch.float32), region)
    p = pred.to(torch.float64)
    inter, sp, sr = (p * r).sum(1), p.sum(1), r.sum(1)
    iou = inter / (sp + sr - inter)
    dice = 2 * inter / (sp + sr)
    empty = _no_region(r)
    return iou.masked_fill(empty, math.nan), dice.masked_fill(empty, math.nan)


def cnr(sim: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``[B]`` float64 contrast-to-noise ratio (BioViL): ``|μ_in − μ_out| / sqrt(σ²_in + σ²_out)``
    with pixel-weighted means and population variances inside (weights ``region``) and outside
    (weights ``1 − region``). 0 for 0/0, +inf for a contrast over no variance, NaN when the region
    covers no pixel or every pixel."""
    w_in = _check(sim, region)
    s = sim.to(torch.float64)
    w_out = 1.0 - w_in
    n_in, n_out = w_in.sum(1), w_out.sum(1)
    mu_in = (w_in * s).sum(1) / n_in
    mu_out = (w_out * s).sum(1) / n_out
    var_in = (w_in * (s - mu_in[:, None]) ** 2).sum(1) / n_in
    var_out = (w_out * (s - mu_out[:, None]) ** 2).sum(1) / n_out
    out = (mu_in - mu_out).abs() / (var_in + var_out).sqrt()
    out = torch.where((mu_in == mu_out) & (var_in + var_out == 0), torch.zeros_like(out), out)
    return out.masked_fill((n_in <= 0) | (n_out <= 0), math.nan)


def grounding_metrics(sim: torch.Tensor, region: torch.Tensor, threshold: float = THRESHOLD) -> dict[str, torch.Tensor]:
    """Every metric per row: ``pointing``, ``iou``, ``dice``, ``cnr``, each ``[B]`` float64 (NaN
    for a row with an empty region)."""
    iou, dice = iou_dice(threshold_map(sim, threshold), region)
    return {"pointing": pointing_game(sim, region), "iou": iou, "dice": dice, "cnr": cnr(sim, region)}


def summarise(per_row: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean of each metric over the scored rows (NaN rows left out; +inf CNR rows too, counted
    in ``cnr_infinite``) and ``n`` (rows scored), as floats (one transfer to the host)."""
    keys = [k for k in METRICS if k in per_row]
    stacked = torch.stack([per_row[k] for k in keys])                # [M, B]
    ok = stacked.isfinite()
    means = (stacked.nan_to_num(0.0, 0.0, 0.0) * ok).sum(1) / ok.sum(1)
    n = (~per_row[keys[0]].isnan()).sum()
    inf = per_row["cnr"].isinf().sum() if "cnr" in per_row else torch.zeros((), dtype=torch.long)
    vals = torch.cat([means, torch.stack([n, inf]).to(means.dtype)]).tolist()
    return dict(zip([*keys, "n", "cnr_infinite"], vals))


def random_map(shape: tuple[int, int], generator: torch.Generator, device: torch.device | str | None = None) -> torch.Tensor:
    """``[B, N]`` float32 uniform noise from ``generator`` (the random-map baseline)."""
    return torch.rand(shape, generator=generator, device=device or generator.device)


def centre_prior(grid: int, batch: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[batch, grid * grid]`` float32: minus the distance of each patch centre from the image
    centre (in patches) — the centre-prior baseline (the four centre patches tie for the maximum on
    an even grid: its pointing game is the share of them that touch the region)."""
    c = torch.arange(grid, dtype=torch.float32, device=device) + 0.5 - grid / 2
    d = (c[:, None] ** 2 + c[None, :] ** 2).sqrt()
    return (-d).reshape(1, -1).expand(batch, -1).clone()


def baselines(region: torch.Tensor, generator: torch.Generator, threshold: float = THRESHOLD) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`grounding_metrics` of the two baselines on ``region`` (``[B, N]``, ``N = G * G``):
    ``{"random": ..., "centre": ...}``."""
    B, N = region.shape
    grid = math.isqrt(N)
    if grid * grid != N:
        raise ContextError(f"region: {N} patches is not a square grid; expected N = G * G")
    rnd = random_map((B, N), generator, region.device)
    return {"random": grounding_metrics(rnd, region, threshold),
            "centre": grounding_metrics(centre_prior(grid, B, region.device), region, threshold)}
