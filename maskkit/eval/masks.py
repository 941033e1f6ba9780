"""Mask-lesion overlap on data with lesion masks (phantoms): the paper's Fig. 3 as numbers.

For each image strategy and ratio, over held-out images:

- ``lesion_visible``: the fraction of lesion tokens left **visible** (random masking at ratio r
  leaves about 1 - r; perfect guidance at a ratio that covers the lesions leaves 0);
- ``masked_on_lesion``: the fraction of masked tokens that fall on a lesion;
- ``lift``: ``masked_on_lesion`` over the lesion-token base rate (random = 1; bounded by 1/base rate
  and, for a masked fraction r of all tokens, by 1/r when lesions cover less than r);
- ``union_coverage`` (union only): the fraction of tokens in the union before the λ2 subset.

A token is a lesion token when at least ``lesion_threshold`` of its pixels are lesion
(:func:`maskkit.data.regions.lesion_patches` of :func:`~maskkit.data.regions.mask_coverage`, the
functions every region annotation goes through); the counts are
:func:`maskkit.eval.overlap.overlap_counts`, the general mask-lesion overlap.

Strategies see the held-out images in batches of ``batch_size`` (16: the tiny training batch),
as in training: ``atypical`` and the guided unions compare a token with the same position in the
other images of its batch. Counts are summed over batches before the fractions are taken.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..compose import build_strategy
from ..masking import mask_generator
from ..core import MaskContext
from ..data.regions import lesion_patches, mask_coverage
from .overlap import overlap_counts


@dataclass
class Features:
    e_img: torch.Tensor          # [M, N, C]
    e_rep: torch.Tensor          # [M, T, C]
    rep_valid: torch.Tensor      # [M, T]
    prompts: torch.Tensor        # [P, L, C] or [P, C]
    prompt_valid: torch.Tensor | None
    lesion: torch.Tensor         # [M, N] bool lesion tokens


@torch.no_grad()
def extract(model, dataset, lesion_threshold: float = 0.1, batch_size: int = 64, device="cpu") -> Features:
    """Token features of every (paired) sample and its lesion tokens."""
    from ..data.dataset import Collator, decoded_batches

    col = Collator(model.tokenizer)
    e_img, e_rep, valid, lesion = [], [], [], []
    p = model.patch
    for items in decoded_batches(dataset, range(len(dataset)), batch_size):
        b = col(items)
        keep = b["paired"]
        if not keep.any():
            continue
        _, ei = model.encode_image(b["images"][keep].to(device))
        _, er = model.encode_text(b["text"][keep].to(device))
        les = b["lesion"][keep]
        e_img.append(ei.float().cpu())
        e_rep.append(er.float().cpu())
        valid.append(b["text_valid"][keep])
        lesion.append(lesion_patches(mask_coverage(les, les.shape[1] // p), lesion_threshold))
    prompts, pv = model.prompt_features(device)
    return Features(torch.cat(e_img), torch.cat(e_rep), torch.cat(valid), prompts.float().cpu(),
                    None if pv is None else pv.cpu(), torch.cat(lesion))


def _counts(strategy, f: Features, lo: int, hi: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    ctx = MaskContext(image_tokens=f.e_img[lo:hi], report_tokens=f.e_rep[lo:hi], report_valid=f.rep_valid[lo:hi],
                      prompt_tokens=f.prompts, prompt_valid=f.prompt_valid, generator=generator)
    strategy.check_inputs(ctx)
    if strategy.output == "tokens":
        ex = strategy.explain(ctx)
        mask, union = ex["mask"], ex.get("union")
    else:
        mask, union = strategy(ctx), None
    c = overlap_counts(mask, f.lesion[lo:hi])  # the general mask-lesion counts (eval/overlap.py)
    out = {"lesion": c["lesion"].sum(), "lesion_visible": c["visible_lesion"].sum(), "masked": c["masked"].sum(),
           "masked_on_lesion": c["masked_lesion"].sum(), "tokens": c["tokens"].sum()}
    if union is not None:
        out["union"] = union.sum()
    return out


def measure(strategy, f: Features, seed: int = 0, batch_size: int | None = None) -> dict:
    """Overlap of ``strategy``'s masks with the lesion tokens of ``f``, the images taken in batches
    of ``batch_size`` (None: all at once), one generator seeded with ``seed`` for all batches.

    Returns fractions: ``lesion_visible``, ``masked_on_lesion``, ``lift``, ``masked_fraction``,
    ``lesion_base_rate`` and, for a union, ``union_coverage`` (all in [0, 1] except lift).
    ``1 - lesion_visible`` is :func:`maskkit.eval.overlap.summarise`'s ``share_micro``, and ``lift``
    its ``lift_micro`` (every image is masked at one ratio). Counts stay on the device until the end.
    """
    M = f.e_img.shape[0]
    step = batch_size or M
    g = mask_generator(seed, "image_mask")  # the seed rule training uses (A30)
    parts = [_counts(strategy, f, lo, min(lo + step, M), g) for lo in range(0, M, step)]
    sums = torch.stack([torch.stack(list(p.values())) for p in parts]).sum(0).tolist()  # one transfer
    tot = dict(zip(parts[0], map(float, sums)))
    base = tot["lesion"] / tot["tokens"]
    masked_on = tot["masked_on_lesion"] / max(tot["masked"], 1.0)
    out = {"lesion_visible": tot["lesion_visible"] / max(tot["lesion"], 1.0), "masked_on_lesion": masked_on,
           "lift": masked_on / base if base else float("nan"), "masked_fraction": tot["masked"] / tot["tokens"],
           "lesion_base_rate": base}
    if "union" in tot:
        out["union_coverage"] = tot["union"] / tot["tokens"]
    return out


def default_grid(ratio: float = 0.75) -> list[tuple[str, dict]]:
    """(label, spec): random, each attention strategy per reduction, the union (uniform and
    score_weighted) per reduction and λ1."""
    rows = [("random", {"random": {"ratio": ratio}})]
    for red in ("l2", "received", "max_sim", "entry_count"):
        for name in ("report_cross", "prompt_driven", "image_self"):
            rows.append((f"{name} [{red}]", {name: {"ratio": ratio, "reduction": red}}))
        for subset, lam in itertools.product(("uniform", "score_weighted"), (0.5, 0.6, 0.7, 0.8)):
            kids = [{n: {"reduction": red}} for n in ("report_cross", "prompt_driven", "image_self")]
            rows.append((f"union {subset} λ1={lam} [{red}]",
                         {"union": {"of": kids, "child_ratio": lam, "ratio": ratio, "subset": subset}}))
    return rows + guided_grid(ratio)


def guided_grid(ratio: float = 0.75) -> list[tuple[str, dict]]:
    """(label, spec): the issue-12 options beside the paper-faithful union (default reduction):
    ``atypical`` alone, the ranked subset at several temperatures, the max blend, and the union of
    the paper's three children with ``atypical`` under each subset and blend, including the
    "two voices" weights of ``xlip-guided`` (the paper's blend and atypical weighed equally)."""
    kids = ["report_cross", "prompt_driven", "image_self"]
    rows = [("atypical", {"atypical": {"ratio": ratio}}),
            ("union uniform λ1=0.7 (paper)", {"union": {"of": kids, "ratio": ratio}})]
    for tau in (0.0, 0.1, 0.3, 1.0):
        rows.append((f"union ranked τ={tau}", {"union": {"of": kids, "ratio": ratio, "subset": "ranked", "temperature": tau}}))
    rows.append(("union ranked τ=0 blend=max", {"union": {"of": kids, "ratio": ratio, "subset": "ranked", "blend": "max"}}))
    four = kids + ["atypical"]
    rows.append(("union+atypical uniform", {"union": {"of": four, "ratio": ratio}}))
    rows.append(("union+atypical score_weighted", {"union": {"of": four, "ratio": ratio, "subset": "score_weighted"}}))
    for blend in ("mean", "max"):
        for tau in (0.0, 0.1, 0.3):
            rows.append((f"union+atypical ranked τ={tau} blend={blend}",
                         {"union": {"of": four, "ratio": ratio, "subset": "ranked", "temperature": tau, "blend": blend}}))
    rows.append(("union+atypical ranked τ=0 two voices", {"union": {"of": four, "ratio": ratio, "subset": "ranked",
                                                                   "weights": [1.0, 1.0, 1.0, 3.0]}}))
    from ..presets import GUIDED

    rows.append(("xlip-guided (preset image_mask)", {"union": {**GUIDED["union"], "ratio": ratio}}))
    return rows


def evaluate_masks(f: Features, grid: list[tuple[str, dict]], seeds: int = 3, batch_size: int | None = 16) -> list[dict]:
    """Every strategy of ``grid`` measured on the features in batches of ``batch_size`` (random
    ones averaged over ``seeds``)."""
    rows = []
    for label, spec in grid:
        s = build_strategy(spec)
        runs = [measure(s, f, seed, batch_size) for seed in range(seeds if s.stochastic else 1)]
        avg = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        rows.append({"strategy": label, **avg})
    return rows
