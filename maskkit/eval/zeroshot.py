"""Zero-shot classification, CheXzero-style: a positive and a negative prompt per label.

probability(label) = softmax over (cos(image, positive), cos(image, negative)); per-label AUC
from scikit-learn. Labels with no positives or no negatives in the evaluation set are reported
as undefined and left out of the mean, never averaged as NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

# "no No Finding" inverts the label (a known CheXzero pitfall): No Finding gets its own pair
SPECIAL_PROMPTS = {"No Finding": ("no acute cardiopulmonary abnormality", "acute cardiopulmonary abnormality")}


def prompt_pair(label: str, positive: str = "{label}", negative: str = "no {label}") -> tuple[str, str]:
    if label in SPECIAL_PROMPTS:
        return SPECIAL_PROMPTS[label]
    name = label.replace("_", " ").lower()
    return positive.format(label=name), negative.format(label=name)


@dataclass
class ZeroShotResult:
    labels: list[str]
    auc: dict[str, float | None]
    n_pos: dict[str, int]
    n: int
    undefined: list[str] = field(default_factory=list)

    @property
    def mean_auc(self) -> float | None:
        vals = [v for v in self.auc.values() if v is not None]
        return float(np.mean(vals)) if vals else None

    def to_json(self) -> dict:
        return {"n": self.n, "mean_auc": self.mean_auc, "auc": self.auc, "n_pos": self.n_pos, "undefined": self.undefined}

    def table(self):
        from rich.table import Table

        t = Table(title=f"zero-shot on {self.n} held-out images")
        t.add_column("label")
        t.add_column("positives", justify="right")
        t.add_column("AUC", justify="right")
        for lab in self.labels:
            a = self.auc[lab]
            t.add_row(lab, str(self.n_pos[lab]), "undefined" if a is None else f"{a:.3f}")
        m = self.mean_auc
        t.add_row("[bold]mean[/]", "", "undefined" if m is None else f"[bold]{m:.3f}[/]")
        return t


@torch.no_grad()
def encode_images(model, dataset, device, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised image embeddings ``[M, C]``, labels ``[M, K]``) of every decodable sample."""
    model.eval()
    feats, labels = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        items = [s for s in items if "skipped" not in s]
        if not items:
            continue
        imgs = torch.stack([s["image"] for s in items]).to(device)
        pooled, _ = model.encode_image(imgs)
        feats.append(F.normalize(pooled.float(), dim=-1).cpu())
        labels.append(torch.stack([s["labels"] for s in items]).float())
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def zeroshot_eval(model, dataset, label_names, device="cpu", batch_size: int = 64) -> ZeroShotResult:
    from sklearn.metrics import roc_auc_score

    img, y = encode_images(model, dataset, device, batch_size)
    pairs = [prompt_pair(l) for l in label_names]
    enc = model.tokenizer([p for pair in pairs for p in pair])
    pooled, _ = model.encode_text(enc.ids.to(device))
    txt = F.normalize(pooled.float(), dim=-1).cpu().view(len(label_names), 2, -1)
    sims = torch.einsum("mc,kpc->mkp", img, txt)  # [M, K, 2]
    prob = sims.softmax(-1)[..., 0].numpy()
    auc, n_pos, undefined = {}, {}, []
    for k, lab in enumerate(label_names):
        yk = y[:, k].numpy()
        known = ~np.isnan(yk)
        pos = int((yk[known] == 1).sum())
        n_pos[lab] = pos
        if pos == 0 or pos == int(known.sum()):
            auc[lab] = None
            undefined.append(lab)
            continue
        auc[lab] = float(roc_auc_score(yk[known], prob[known, k]))
    return ZeroShotResult(list(label_names), auc, n_pos, int(img.shape[0]), undefined)
