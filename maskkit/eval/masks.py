"""Mask-lesion overlap on data with lesion masks (phantoms): the paper's Fig. 3 as numbers.

For each image strategy and ratio, over held-out images:

- ``lesion_visible``: the fraction of lesion tokens left **visible** (random masking at ratio r
  leaves about 1 - r; perfect guidance at a ratio that covers the lesions leaves 0);
- ``masked_on_lesion``: the fraction of masked tokens that fall on a lesion;
- ``lift``: ``masked_on_lesion`` over the lesion-token base rate (random = 1; bounded by 1/base rate
  and, for a masked fraction r of all tokens, by 1/r when lesions cover less than r);
- ``union_coverage`` (union only): the fraction of tokens in the union before the λ2 subset.

A token is a lesion token when at least ``lesion_threshold`` of its pixels are lesion.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..compose import build_strategy
from ..masking import mask_generator
from ..core import MaskContext


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
    from ..data.dataset import Collator

    col = Collator(model.tokenizer)
    e_img, e_rep, valid, lesion = [], [], [], []
    p = model.patch
    for start in range(0, len(dataset), batch_size):
        b = col([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        keep = b["paired"]
        if not keep.any():
            continue
        _, ei = model.encode_image(b["images"][keep].to(device))
        _, er = model.encode_text(b["text"][keep].to(device))
        les = b["lesion"][keep].float()
        M, H, W = les.shape
        frac = les.reshape(M, H // p, p, W // p, p).mean((2, 4)).reshape(M, -1)
        e_img.append(ei.float().cpu())
        e_rep.append(er.float().cpu())
        valid.append(b["text_valid"][keep])
        lesion.append(frac >= lesion_threshold)
    prompts, pv = model.prompt_features(device)
    return Features(torch.cat(e_img), torch.cat(e_rep), torch.cat(valid), prompts.float().cpu(),
                    None if pv is None else pv.cpu(), torch.cat(lesion))


def measure(strategy, f: Features, seed: int = 0) -> dict:
    ctx = MaskContext(image_tokens=f.e_img, report_tokens=f.e_rep, report_valid=f.rep_valid, prompt_tokens=f.prompts,
                      prompt_valid=f.prompt_valid, generator=mask_generator(seed, "image_mask"))
    strategy.check_inputs(ctx)
    if hasattr(strategy, "explain") and strategy.output == "tokens":
        ex = strategy.explain(ctx)
        mask, union = ex["mask"], ex.get("union")
    else:
        mask, union = strategy(ctx), None
    les = f.lesion
    n_les = les.sum().clamp_min(1)
    base = float(les.float().mean())
    masked_on = float((mask & les).sum() / mask.sum().clamp_min(1))
    out = {"lesion_visible": float((les & ~mask).sum() / n_les), "masked_on_lesion": masked_on,
           "lift": masked_on / base if base else float("nan"), "masked_fraction": float(mask.float().mean()),
           "lesion_base_rate": base}
    if union is not None:
        out["union_coverage"] = float(union.float().mean())
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
    return rows


def evaluate_masks(f: Features, grid: list[tuple[str, dict]], seeds: int = 3) -> list[dict]:
    """Every strategy of ``grid`` measured on the features (random ones averaged over ``seeds``)."""
    rows = []
    for label, spec in grid:
        s = build_strategy(spec)
        runs = [measure(s, f, seed) for seed in range(seeds if s.stochastic else 1)]
        avg = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        rows.append({"strategy": label, **avg})
    return rows
