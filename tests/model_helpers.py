"""Small XLIP models and phantom batches for the model tests (CPU-sized)."""

from __future__ import annotations

from functools import lru_cache

import torch

from maskkit.data.dataset import Collator, PhantomDataset
from maskkit.data.ner import LexiconNER
from maskkit.model import MIMConfig, MLMConfig, ModelConfig, XLIP
from maskkit.presets import PRESETS


@lru_cache(maxsize=1)
def _ner():
    return LexiconNER()


def tiny_config(preset: str = "xlip", **overrides) -> ModelConfig:
    p = PRESETS[preset][0]
    kw = dict(arch="maskkit-tiny", mim=MIMConfig(decoder_depth=2, decoder_width=64, decoder_heads=4),
              mlm=MLMConfig(layers=1, heads=4), image_mask=p["image_mask"], image_only_mask=p["image_only_mask"],
              text_mask=p["text_mask"])
    kw.update(overrides)
    return ModelConfig(**kw)


def tiny_model(preset: str = "xlip", seed: int = 0, **overrides) -> XLIP:
    torch.manual_seed(seed)
    return XLIP(tiny_config(preset, **overrides))


def phantom_batch(n: int = 8, offset: int = 0, seed: int = 0, p_unpaired: float = 0.2, context: int = 64) -> dict:
    from maskkit.data.tokenize import ReportTokenizer

    ds = PhantomDataset(n, seed=seed, image_size=96, offset=offset, ner=_ner(), p_unpaired=p_unpaired)
    return Collator(ReportTokenizer(context))([ds[i] for i in range(n)])


def subset(batch: dict, rows) -> dict:
    idx = torch.as_tensor(rows)
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch["images"].shape[0]:
            out[k] = v[idx]
        elif isinstance(v, list) and len(v) == batch["images"].shape[0]:
            out[k] = [v[i] for i in idx.tolist()]
        else:
            out[k] = v
    return out
