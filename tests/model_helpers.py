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


# A tiny WordPiece vocabulary: special tokens, report words, a few word pieces and every letter
# (so that any lower-case word tokenizes, piece by piece).
TINY_WORDS = ("the heart is normal size no pleural effusion pneumothorax lungs are clear mild cardiomegaly left "
              "right lower lobe opacity . , ; of and with there focal consolidation").split()
TINY_VOCAB = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(TINY_WORDS))
                                + ["##ing", "##ed", "##al"] + list("abcdefghijklmnopqrstuvwxyz")
                                + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]))


def tiny_bert_folder(folder, hidden: int = 32, layers: int = 2, positions: int = 64, masked_lm: bool = False, seed: int = 0):
    """A transformers BERT model folder as Hugging Face writes one (``config.json``,
    ``model.safetensors``, the tokenizer's files): a tiny WordPiece vocabulary and a
    ``hidden``-wide, ``layers``-deep BERT; ``masked_lm`` saves a ``BertForMaskedLM`` (keys under
    ``bert.`` plus the ``cls.`` head). Returns the folder (a ``Path``)."""
    from pathlib import Path

    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    cfg = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=positions, pad_token_id=0)
    torch.manual_seed(seed)
    (BertForMaskedLM if masked_lm else BertModel)(cfg).save_pretrained(folder)
    return folder


def tiny_hf_arch(text_folder, context: int = 32, pooler: str = "cls_last_hidden_state_pooler", proj: str = "mlp") -> dict:
    """An open_clip model config: maskkit-tiny's ViT (96 px, patch 16, thinner) and an HF text
    tower read from ``text_folder`` (as BiomedCLIP's config reads PubMedBERT)."""
    return {"embed_dim": 32,
            "vision_cfg": {"image_size": 96, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
            "text_cfg": {"hf_model_name": str(text_folder), "hf_tokenizer_name": str(text_folder), "hf_proj_type": proj,
                         "hf_pooler_type": pooler, "context_length": context}}
