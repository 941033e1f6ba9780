"""XLIP: CLIP towers + AttMIM + EntMLM, returning a dict of losses (eq. 14-16).

Data flow (docs/model.md draws it): images -> ViT -> E_img; reports -> text tower -> E_report;
disease prompts -> text tower -> E_prompt. The configured image strategy masks E_img (paired
samples: e.g. report ∪ prompt ∪ self; image-only samples: prompt ∪ self); the MAE decoder
reconstructs the masked patches. The text mask (entity ∩ causal) drives the multimodal text
decoder, which cross-attends E_img. The alignment loss is symmetric InfoNCE on pooled features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..compose import build_strategy
from ..core import MaskContext
from ..errors import MaskkitError
from ..data.tokenize import ReportTokenizer
from .config import ModelConfig
from .mim import MIMDecoder, mim_loss
from .mlm import TextDecoder, mlm_loss
from .towers import create_clip, image_tokens, load_pretrained, patchify, text_tokens

TERMS = ("align", "mim", "mlm")


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised pooled features ``[B, C]`` (the loss after eq. 11)."""
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    logits = logit_scale.exp() * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class XLIP(nn.Module):
    """``forward(batch, seed=..., terms=...) -> {"align_loss", "mim_loss", "mlm_loss"}`` (each when it applies).

    The dict also holds ``mim_mask`` (``[B, N]`` bool, the AttMIM mask used); a training loop
    sums the keys ending in ``_loss``.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ModelConfig()
        self.clip = create_clip(cfg.arch)
        self.load_report = load_pretrained(self.clip, cfg.pretrained) if cfg.pretrained else None
        v = self.clip.visual
        self.patch = v.patch_size[0]
        self.grid = tuple(v.grid_size)
        self.image_size = v.image_size[0]
        C = self.clip.text_projection.shape[1] if not isinstance(self.clip.text_projection, nn.Linear) else self.clip.text_projection.out_features
        self.embed_dim = C
        self.context_length = self.clip.context_length
        self.register_buffer("image_mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(cfg.image_std).view(1, 3, 1, 1))
        self.clip.logit_scale.data.fill_(math.log(1 / cfg.init_temperature))
        self.image_mask = build_strategy(cfg.image_mask, "model.image_mask") if cfg.image_mask is not None else None
        self.image_only_mask = build_strategy(cfg.image_only_mask, "model.image_only_mask") if cfg.image_only_mask is not None else None
        self.text_mask = build_strategy(cfg.text_mask, "model.text_mask") if cfg.text_mask is not None else None
        for name, s, modality in (("image_mask", self.image_mask, "image"), ("image_only_mask", self.image_only_mask, "image"),
                                  ("text_mask", self.text_mask, "text")):
            if s is not None and s.modality != modality:
                raise MaskkitError(f"model.{name}: expected a {modality} strategy, got a {s.modality} one ({s.name})")
        if self.image_only_mask is not None and self.image_only_mask.all_requires & {"report_tokens", "report_valid"}:
            raise MaskkitError("model.image_only_mask: image-only samples have no report; use strategies such as prompt_driven and image_self")
        if self.text_mask is not None and self.text_mask.output != "attention":
            raise MaskkitError("model.text_mask: expected an attention mask [B, T, T] (e.g. {intersect: {of: [entity, causal]}})")
        self.decoder = MIMDecoder(C, self.grid, self.patch, cfg.mim.decoder_width, cfg.mim.decoder_depth, cfg.mim.decoder_heads) \
            if (self.image_mask is not None or self.image_only_mask is not None) else None
        self.text_decoder = TextDecoder(C, self.clip.vocab_size, self.context_length, cfg.mlm.layers, cfg.mlm.heads) \
            if self.text_mask is not None else None
        self.mask_embedding = nn.Parameter(torch.zeros(self.clip.token_embedding.weight.shape[1])) \
            if self.text_mask is not None and cfg.mlm.mode == "input" else None
        self.tokenizer = ReportTokenizer(self.context_length)
        enc = self.tokenizer(list(cfg.prompts))
        width = int(enc.valid.sum(1).max())  # prompts are short: encode only their real length
        self._prompt_ids = type(enc)(enc.ids[:, :width], enc.valid[:, :width], enc.spans)

    # --- pieces --------------------------------------------------------------------------
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Grayscale ``[B, 1, H, W]`` in [0, 1] -> replicated, normalised ``[B, 3, H, W]`` (CheXzero)."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise MaskkitError(f"images are {tuple(images.shape[-2:])} px; model.arch {self.config.arch} expects {self.image_size} px "
                               f"(set data.image_size={self.image_size})")
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return (x - self.image_mean) / self.image_std

    def encode_image(self, images: torch.Tensor):
        """(pooled ``[B, C]``, E_img ``[B, N, C]``) of grayscale images in [0, 1]."""
        return image_tokens(self.clip, self.normalise(images))

    def encode_text(self, ids: torch.Tensor):
        """(pooled ``[B, C]``, E_report ``[B, T, C]``) of token ids."""
        return text_tokens(self.clip, ids)

    def prompt_features(self, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """E_prompt from the current text tower (no gradient: prompts only steer the masks)."""
        ids, valid = self._prompt_ids.ids.to(device), self._prompt_ids.valid.to(device)
        with torch.no_grad():
            pooled, toks = text_tokens(self.clip, ids)
        if self.config.prompt_features == "pooled":
            return pooled, None
        return toks, valid

    def mlm_hidden(self, ids, valid, entities, image_tokens, seed: int, e_rep=None):
        """EntMLM's decoder pass on paired rows: (hidden ``[B, T, C]``, selected ``[B, T]``).

        The text mask is drawn from ``seed + 2``; ``mlm.mode=input`` re-encodes the report with
        the selected tokens replaced by the mask embedding, ``loss`` uses the clean E_report.
        """
        ctx = MaskContext(report_valid=valid, entities=entities,
                          generator=torch.Generator(device=ids.device).manual_seed(seed + 2))
        attn = self.text_mask(ctx)  # [B, T, T], True = may not attend
        selected = _selected_positions(attn)
        if self.config.mlm.mode == "input":
            _, dec_in = text_tokens(self.clip, ids, replace=selected, mask_embedding=self.mask_embedding)
        else:
            dec_in = e_rep if e_rep is not None else text_tokens(self.clip, ids)[1]
        return self.text_decoder(dec_in, image_tokens, attn, ~valid), selected

    # --- forward -------------------------------------------------------------------------
    def forward(self, batch: dict, seed: int = 0, terms: tuple[str, ...] = TERMS, gather=None) -> dict[str, torch.Tensor]:
        """batch: ``images [B,1,H,W]``, ``text [B,T]``, ``text_valid [B,T]``, ``paired [B]``,
        ``entities [B,T]``. Returns the losses that apply: paired samples get all three
        (eq. 14), image-only ones MIM only (eq. 15); a mixed batch sums both (eq. 16).
        ``gather`` (a :class:`maskkit.distributed.Gatherer`) makes the contrastive loss use the
        embeddings of every rank and the MIM/MLM means global, under DistributedDataParallel."""
        images = batch["images"]
        dev = images.device
        paired = batch["paired"].to(dev)
        x = self.normalise(images)
        pooled_img, e_img = image_tokens(self.clip, x)
        out: dict[str, torch.Tensor] = {}
        ip = torch.nonzero(paired).flatten()
        iu = torch.nonzero(~paired).flatten()
        any_paired = ip.numel() > 0  # one host sync per step, on the batch layout only
        any_unpaired = iu.numel() > 0
        dist = gather is not None and gather.info.enabled  # collectives run on every rank, always
        e_rep = rep_valid = ids = pooled_txt = None
        if any_paired and ({"align", "mlm"} & set(terms) or self.image_mask is not None):
            ids = batch["text"].to(dev)[ip]
            rep_valid = batch["text_valid"].to(dev)[ip]
            pooled_txt, e_rep = text_tokens(self.clip, ids)
        if "align" in terms and (any_paired or dist):
            gi = pooled_img[ip]
            gt = pooled_txt if pooled_txt is not None else pooled_img.new_zeros((0, pooled_img.shape[1]))
            if dist:
                gi, gt = gather.rows(gi), gather.rows(gt)
            if gi.shape[0] > 0:
                out["align_loss"] = clip_loss(gi, gt, self.clip.logit_scale)
        if "mim" in terms and self.decoder is not None:
            prompts, prompt_valid = self.prompt_features(dev)
            groups = []  # (rows, mask) per branch: paired (eq. 14) and image-only (eq. 15)
            if any_paired and self.image_mask is not None:
                ctx = MaskContext(image_tokens=e_img[ip].detach(), report_tokens=e_rep.detach(), report_valid=rep_valid,
                                  prompt_tokens=prompts, prompt_valid=prompt_valid,
                                  generator=torch.Generator(device=dev).manual_seed(seed))
                groups.append((ip, self.image_mask(ctx)))
            if any_unpaired and self.image_only_mask is not None:
                ctx = MaskContext(image_tokens=e_img[iu].detach(), prompt_tokens=prompts, prompt_valid=prompt_valid,
                                  generator=torch.Generator(device=dev).manual_seed(seed + 1))
                groups.append((iu, self.image_only_mask(ctx)))
            count = sum((m.sum() for _, m in groups), torch.zeros((), device=dev))
            denom = gather.mean_denominator(count) if dist else None
            if groups:
                preds, targets, masks = [], [], []
                for rows, m in groups:
                    if self.config.mim.placement == "feature":
                        preds.append(self.decoder(e_img[rows], m))
                    else:  # MAE: encode only the visible patches (the same count in every row of a branch)
                        n_keep = m.shape[1] - int(m[0].sum())
                        keep = torch.sort(m.to(torch.uint8), dim=1, stable=True).indices[:, :n_keep].sort(dim=1).values
                        _, vis = image_tokens(self.clip, x[rows], keep=keep)
                        preds.append(self.decoder.forward_visible(vis, keep, m.shape[1]))
                    targets.append(patchify(images[rows, :1], self.patch))
                    masks.append(m)
                out["mim_loss"] = mim_loss(torch.cat(preds), torch.cat(targets), torch.cat(masks), self.config.mim.norm_pix, denom)
                full = torch.zeros(images.shape[0], e_img.shape[1], dtype=torch.bool, device=dev)
                for rows, m in groups:
                    full[rows] = m
                out["mim_mask"] = full
        if "mlm" in terms and self.text_decoder is not None and (any_paired or dist):
            if not any_paired:
                gather.mean_denominator(torch.zeros((), device=dev))  # match the other ranks' collective
                return out
            hidden, selected = self.mlm_hidden(ids, rep_valid, batch["entities"].to(dev)[ip], e_img[ip], seed, e_rep)
            targets = selected & rep_valid
            denom = gather.mean_denominator(targets[:, 1:].sum()) if dist else None
            out["mlm_loss"] = mlm_loss(self.text_decoder, hidden, ids, targets, denom)
        return out


@torch.no_grad()
def reconstruct_text(model: XLIP, batch: dict, seed: int = 0) -> list[dict]:
    """EntMLM's view of each paired report: the selected (masked) positions and the decoder's
    top-1 prediction for each, as produced in training (same masks for the same seed)."""
    if model.text_decoder is None:
        raise MaskkitError("this model has no text decoder (text_mask is null)")
    dev = next(model.parameters()).device
    ip = torch.nonzero(batch["paired"]).flatten()
    if ip.numel() == 0:
        return []
    ids = batch["text"][ip].to(dev)
    valid = batch["text_valid"][ip].to(dev)
    _, e_img = model.encode_image(batch["images"][ip].to(dev))
    hidden, selected = model.mlm_hidden(ids, valid, batch["entities"][ip].to(dev), e_img, seed)
    selected = selected & valid
    pred = model.text_decoder.head(hidden[:, :-1]).argmax(-1)  # position t-1 predicts token t
    out = []
    for row in range(ids.shape[0]):
        pos = torch.nonzero(selected[row, 1:]).flatten() + 1
        out.append({"index": int(ip[row]), "positions": pos.tolist(), "truth": ids[row, pos].tolist(),
                    "predicted": pred[row, pos - 1].tolist()})
    return out


def _selected_positions(attn: torch.Tensor) -> torch.Tensor:
    """The positions whose token is reconstructed: those hidden from some earlier query.

    For ``positional ∩ causal`` that is exactly the positional selection; for a plain causal mask
    it is every position but the first (captioning).
    """
    return attn.any(dim=1)
