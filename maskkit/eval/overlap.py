"""Mask-lesion overlap: how much of the annotated lesion a mask strategy hides (issue 19, 3b).

One convention with the rest of maskkit (``maskkit.core``): a mask is ``[B, N]`` bool and
``True`` means **masked**. ``lesion`` is ``[B, N]`` bool, ``True`` = a lesion patch (from
:func:`maskkit.data.regions.lesion_patches`); ``valid`` (optional) ``[B, N]`` bool, ``True`` = a
real token (padding is never masked and never lesion).

Per image ``b`` (``L_b`` lesion patches, ``n_b`` valid tokens, ``k_b`` masked tokens):

- ``share_b = |mask & lesion| / L_b``: the share of the annotated lesion patches that are masked
  (NaN when the image has no lesion patch);
- ``ratio_b = k_b / n_b``: the masked fraction; masking ``k_b`` of the ``n_b`` tokens uniformly at
  random masks a share ``ratio_b`` of the lesion patches **in expectation** (the mean of the
  hypergeometric law), the random baseline at the same ratio;
- ``lift_b = share_b / ratio_b`` (1 = no better than random).

Aggregated over the images that have lesion patches:

- **micro** (the headline): ``Σ |mask & lesion| / Σ L_b`` — every annotated lesion patch counts
  once — against the random expectation ``Σ ratio_b L_b / Σ L_b`` (= the ratio when every image is
  masked at one ratio); ``lift_micro`` is their quotient. It is what ``maskkit eval masks`` has
  reported on phantoms as ``1 - lesion_visible``, and it is stable when some images have one or
  two lesion patches (whose ``share_b`` can only be 0, ½ or 1).
- **macro**: the mean of ``share_b`` — every image counts once, so small lesions weigh as much as
  large ones — against the mean ``ratio_b``; ``lift_macro`` is their quotient.

With a ``generator`` the random baseline is also *measured*: :func:`random_like` draws, per
image, ``k_b`` of its valid tokens uniformly (seeded, no global RNG), scored the same way
(``random_micro_measured``, ``random_macro_measured``).
"""

from __future__ import annotations

import torch

from ..errors import ContextError


def _check(masks: torch.Tensor, lesion: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    for name, t in (("masks", masks), ("lesion", lesion), ("valid", valid)):
        if t is None:
            continue
        if t.dtype != torch.bool or t.dim() != 2:
            raise ContextError(f"{name}: expected a [B, N] bool tensor, got {tuple(t.shape)} {t.dtype}")
        if t.shape != masks.shape:
            raise ContextError(f"{name}: shape {tuple(t.shape)}; expected the masks' {tuple(masks.shape)}")
    return torch.ones_like(masks) if valid is None else valid


def overlap_counts(masks: torch.Tensor, lesion: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-image counts, ``[B]`` int64 each: ``tokens`` (valid), ``lesion``, ``masked``,
    ``masked_lesion`` (masked lesion patches), ``visible_lesion`` (lesion patches left visible).
    Invalid positions count as neither lesion nor masked."""
    valid = _check(masks, lesion, valid)
    m, les = masks & valid, lesion & valid
    ml = (m & les).sum(1)
    return {"tokens": valid.sum(1), "lesion": les.sum(1), "masked": m.sum(1), "masked_lesion": ml,
            "visible_lesion": les.sum(1) - ml}


def random_like(masks: torch.Tensor, generator: torch.Generator, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, N]`` bool: per row, as many ``True`` as ``masks`` has among the valid positions, drawn
    uniformly among them from ``generator`` (on the masks' device). Rows are independent."""
    valid = _check(masks, masks, valid)
    k = (masks & valid).sum(1, keepdim=True)
    u = torch.rand(masks.shape, generator=generator, device=masks.device)
    u = u.masked_fill(~valid, 2.0)  # padding sorts last, never drawn
    rank = u.argsort(1).argsort(1)
    return rank < k


def per_image(counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``[B]`` float64 ``share``, ``ratio``, ``lift`` from :func:`overlap_counts` (NaN where an
    image has no lesion patch; ``lift`` NaN where nothing is masked)."""
    les = counts["lesion"].double()
    share = counts["masked_lesion"].double() / les.where(les > 0, torch.nan)
    ratio = counts["masked"].double() / counts["tokens"].double().clamp_min(1)
    return {"share": share, "ratio": ratio, "lift": share / ratio.where(ratio > 0, torch.nan)}


def summarise(counts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Micro and macro shares, random expectations and lifts over the images with lesion patches
    (see the module docstring), plus ``images`` (with lesion patches), ``lesion_patches``,
    ``masked_fraction`` (all tokens) and ``lesion_base_rate`` (lesion patches / tokens). NaN
    where undefined (no lesion patch at all)."""
    p = per_image(counts)
    has = counts["lesion"] > 0
    les = counts["lesion"].double()
    tot_les = les.sum()
    micro = counts["masked_lesion"].double().sum() / tot_les
    random_micro = (p["ratio"] * les).sum() / tot_les
    n = has.sum()
    macro = p["share"][has].sum() / n
    random_macro = p["ratio"][has].sum() / n
    tokens = counts["tokens"].double().sum()
    vals = torch.stack([micro, random_micro, micro / random_micro, macro, random_macro, macro / random_macro,
                        n.double(), tot_les, counts["masked"].double().sum() / tokens, tot_les / tokens])
    keys = ("share_micro", "random_micro", "lift_micro", "share_macro", "random_macro", "lift_macro",
            "images", "lesion_patches", "masked_fraction", "lesion_base_rate")
    return dict(zip(keys, vals.tolist()))  # one transfer to the host


def lesion_overlap(masks: torch.Tensor, lesion: torch.Tensor, valid: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The overlap of ``masks`` (``[B, N]`` bool, True = masked, from any strategy) with the lesion
    patches ``lesion`` (``[B, N]`` bool). Returns ``(summary, per_image)``: the floats of
    :func:`summarise` (headline ``share_micro`` and ``lift_micro``) and the ``[B]`` tensors of
    :func:`per_image` with the counts. With ``generator``, adds the random baseline measured on
    :func:`random_like` masks: ``random_micro_measured`` and ``random_macro_measured``.
    Raises :class:`~maskkit.errors.ContextError` for tensors of the wrong shape or dtype."""
    counts = overlap_counts(masks, lesion, valid)
    summary = summarise(counts)
    if generator is not None:
        rnd = summarise(overlap_counts(random_like(masks, generator, valid), lesion, valid))
        summary["random_micro_measured"] = rnd["share_micro"]
        summary["random_macro_measured"] = rnd["share_macro"]
    return summary, {**counts, **per_image(counts)}
