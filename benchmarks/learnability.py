"""Can the image tower learn each phantom finding at all? Supervised training, development phantoms.

    python benchmarks/learnability.py                              # both patch embeddings, seeds 0 and 1
    python benchmarks/learnability.py --embed linear --seed 0 --steps 1000 --only Pneumothorax

The ViT image tower of ``scale=tiny`` (``model.arch``, ``model.patch_embed``) plus a linear head is
trained *with the labels* (binary cross-entropy, AdamW at the tiny scale's learning rate, batch 16)
on the first 1,024 training phantoms, for the default run's 240 steps unless ``--steps`` says
otherwise; the AUC of each label is then read on 256 *development* phantoms (generator indices
from 30,000,000; never the held-out set). The reference rows are a logistic regression on the raw
pixels and on the 6 × 6 grid of 16-px patch means (fitted on 2,000 development phantoms, scored on
1,000 others). A label that the pixels carry but the supervised tower cannot learn at the default
budget cannot be learnt by any pretraining objective there either: this is the measurement behind
docs/assumptions.md A31. Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from maskkit.config import resolve
from maskkit.data.phantoms import DEV_OFFSET, LABELS, PhantomGenerator
from maskkit.model import XLIP
from maskkit.model.config import PATCH_EMBEDS



def phantoms(seed: int, offset: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images ``[n, 1, 96, 96]``, labels ``[n, 6]``) of generator indices ``offset..offset+n-1``."""
    g = PhantomGenerator(seed, 96)
    ph = [g[offset + i] for i in range(n)]
    return (torch.from_numpy(np.stack([p.image for p in ph]))[:, None],
            torch.tensor([[p.labels[lab] for lab in LABELS] for p in ph]).float())


def supervised(embed: str, seed: int, steps: int, only: list[int]) -> dict[str, float]:
    """Label -> development AUC of the tiny image tower trained with the labels ``only``."""
    cfg, _ = resolve(["preset=clip", f"model.patch_embed={embed}", f"train.seed={seed}"])
    torch.manual_seed(seed)
    model = XLIP.from_experiment(cfg)
    head = torch.nn.Linear(model.embed_dim, len(LABELS))
    x, y = phantoms(cfg.data.seed, 0, cfg.data.n)
    xd, yd = phantoms(cfg.data.seed, DEV_OFFSET, 256)
    opt = torch.optim.AdamW(list(model.clip.visual.parameters()) + list(head.parameters()), lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (cfg.train.batch_size,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(head(model.encode_image(x[idx])[0]), y[idx], reduction="none")
        loss = loss[:, only].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        p = head(model.encode_image(xd)[0])
    return {lab: roc_auc_score(yd[:, k].numpy(), p[:, k].numpy()) for k, lab in enumerate(LABELS) if k in only}


def pixel_reference(seed: int) -> dict[str, dict[str, float]]:
    """Logistic regression on raw pixels and on the 6 × 6 grid of 16-px patch means."""
    x, y = phantoms(seed, DEV_OFFSET, 3000)
    x, y = x[:, 0].numpy().reshape(len(x), -1), y.numpy()
    pooled = x.reshape(-1, 6, 16, 6, 16).mean((2, 4)).reshape(len(x), -1)
    out = {}
    for name, f in (("pixels (9,216)", x), ("16-px patch means (36)", pooled)):
        z = (f - f[:2000].mean(0)) / (f[:2000].std(0) + 1e-6)
        out[name] = {lab: roc_auc_score(y[2000:, k], LogisticRegression(C=0.1, max_iter=2000).fit(z[:2000], y[:2000, k])
                                        .decision_function(z[2000:])) for k, lab in enumerate(LABELS)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embed", action="append", choices=PATCH_EMBEDS, help="patch embedding (repeatable; default both)")
    ap.add_argument("--seed", type=int, action="append", help="training seed (repeatable; default 0 and 1)")
    ap.add_argument("--steps", type=int, default=240, help="optimiser steps (default: the default run's 240)")
    ap.add_argument("--only", action="append", choices=list(LABELS), help="train on these labels only (default all)")
    ap.add_argument("--no-pixels", action="store_true", help="skip the pixel logistic-regression reference")
    args = ap.parse_args()
    torch.set_num_threads(2)
    only = [LABELS.index(lab) for lab in args.only] if args.only else list(range(len(LABELS)))
    print("| tower | seed | steps | " + " | ".join(LABELS[k] for k in only) + " | s |")
    print("|---|---|---|" + "---|" * (len(only) + 1))
    if not args.no_pixels:
        for name, res in pixel_reference(0).items():
            print(f"| logistic regression, {name} | - | - | " + " | ".join(f"{res[LABELS[k]]:.3f}" for k in only) + " | - |", flush=True)
    for embed in args.embed or PATCH_EMBEDS:
        for seed in args.seed or [0, 1]:
            t0 = time.time()
            res = supervised(embed, seed, args.steps, only)
            print(f"| ViT, patch_embed={embed} | {seed} | {args.steps} | " + " | ".join(f"{res[LABELS[k]]:.3f}" for k in only)
                  + f" | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
