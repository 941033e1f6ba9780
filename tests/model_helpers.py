"""Small XLIP models and phantom batches for the model tests (CPU-sized)."""

from __future__ import annotations

from functools import lru_cache

import torch

from maskkit.data.dataset import Collator, PhantomDataset
from maskkit.data.ner import LexiconNER
from maskkit.config import ObjectivesConfig
from maskkit.masking import STREAMS
from maskkit.model import MIMConfig, MLMConfig, ModelConfig, XLIP
from maskkit.objectives import Objectives
from maskkit.presets import PRESETS
from maskkit.terms import TERM_BY_NAME


@lru_cache(maxsize=1)
def _ner():
    return LexiconNER()


def tiny_config(**overrides) -> ModelConfig:
    kw = dict(arch="maskkit-tiny", mim=MIMConfig(decoder_depth=2, decoder_width=64, decoder_heads=4),
              mlm=MLMConfig(layers=1, heads=4))
    kw.update(overrides)
    return ModelConfig(**kw)


def tiny_model(preset: str = "xlip", seed: int = 0, **overrides) -> XLIP:
    """A tiny XLIP with the strategy trees of ``preset``; a tree given as a keyword replaces the preset's."""
    p = PRESETS[preset][0]
    trees = {k: overrides.pop(k) if k in overrides else p[k] for k in STREAMS}
    torch.manual_seed(seed)
    return XLIP(tiny_config(**overrides), **trees)


def model_losses(model: XLIP, batch: dict, seed: int = 0, in_warmup: bool = False) -> dict:
    """Each term's loss (keyed by its log key, e.g. ``align_loss``) and ``mim_mask``, as training computes them."""
    out = model(batch, seed=seed)
    _, values = Objectives.for_model(model, ObjectivesConfig())(out, in_warmup=in_warmup)
    return {TERM_BY_NAME[n].log_key: v for n, v in values.items()} | {"mim_mask": out.mim_mask}


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
