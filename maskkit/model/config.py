"""The model's configuration (pydantic, frozen, unknown keys rejected). Every key is in docs/model.md."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..findings import CHEXPERT_LABELS
from ..options import Strict

#: CLIP's (OpenAI's) image normalisation, the default of ``model.image_mean`` / ``model.image_std``
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: the values of ``model.patch_embed`` (:func:`maskkit.model.towers.create_clip`)
PATCH_EMBEDS = ("linear", "conv_stem")

#: the default ``model.prompts``: CheXpert's observations (:data:`maskkit.findings.CHEXPERT_LABELS`), sorted
CHEXPERT_PROMPTS: tuple[str, ...] = tuple(sorted(CHEXPERT_LABELS))


#: the values of ``mim.placement`` (docs/model.md)
PLACEMENTS = ("feature", "input", "sparse")


class MIMConfig(Strict):
    placement: Literal[PLACEMENTS] = Field("feature", description="mask encoded features (paper, eq. 9), input patches (MAE), or sparse: a low-resolution view of the whole image trains the alignment and steers the mask, and the full-resolution pass encodes only the visible patches (issue 21, docs/model.md)")
    lowres_scale: float = Field(0.5, gt=0, le=1, description="placement=sparse: side of the low-resolution view as a fraction of the image's (its grid rounded, at least 1 token per side)")
    decoder_queries: Literal["all", "masked"] = Field("all", description="all: the decoder runs on every token (MAE); masked: only the masked tokens are queries, the visible ones fixed keys and values (MILAN); needs placement input or sparse")
    decoder_depth: int = Field(8, ge=1, description="MAE decoder blocks (paper: 8)")
    decoder_width: int = Field(512, ge=8, description="MAE decoder width")
    decoder_heads: int = Field(16, ge=1, description="MAE decoder attention heads")
    norm_pix: bool = Field(False, description="per-patch normalised pixel targets (MAE's norm_pix_loss)")

    @model_validator(mode="after")
    def _queries(self):
        if self.decoder_queries == "masked" and self.placement == "feature":
            raise ValueError("decoder_queries=masked needs placement input or sparse (in feature placement the decoder "
                             "reads every encoded token); set placement=sparse or decoder_queries=all")
        return self


class MLMConfig(Strict):
    mode: Literal["input", "loss", "causal"] = Field("input", description="selected tokens hidden at the text-encoder input (input), only selected as loss positions (loss; needs a causal text tower such as CLIP's), or loss positions with a strictly causal decoder over the clean report (causal: one text pass, no copy path; needs a causal text tower; A58)")
    mask_token: Literal["auto", "learned", "tokenizer"] = Field("auto", description="what hides a selected token at the input (mode=input): a learned embedding, the tokenizer's mask token (BERT's [MASK]), or auto: the mask token when the vocabulary has one (docs/assumptions.md A57)")
    layers: int = Field(3, ge=1, description="multimodal text decoder layers (paper: 3)")
    heads: int = Field(8, ge=1, description="text decoder heads")


class ModelConfig(Strict):
    arch: str = Field("ViT-B-16", description="open_clip architecture (maskkit-tiny for CPU)")
    patch_embed: Literal[PATCH_EMBEDS] = Field("linear", description="ViT patch embedding: linear (CLIP's one p×p stride-p convolution) or conv_stem (Xiao et al. 2021: log2(p) 3×3 stride-2 conv-BN-ReLU layers, then 1×1; docs/assumptions.md A31); scale=tiny sets conv_stem unless model.pretrained is given, and conv_stem with model.pretrained is refused (A66)")
    pretrained: str | None = Field(None, description="local weights, never downloaded: OpenAI TorchScript .pt, open_clip .pt/.bin/.safetensors, wrapped or DDP-prefixed state dicts, an open_clip HF-hub folder (open_clip_config.json + weights; its model_cfg is then the architecture), a timm ViT image tower (file or timm folder) or a transformers model folder for an HF text tower; docs/model.md")
    image_mean: tuple[float, float, float] | None = Field(None, description=f"normalisation mean of the 3 replicated channels; null: the weights' own (an open_clip folder's preprocess_cfg mean), else OpenAI CLIP's {OPENAI_MEAN} (docs/assumptions.md A62)")
    image_std: tuple[float, float, float] | None = Field(None, description=f"normalisation std (each > 0); null: the weights' own (an open_clip folder's preprocess_cfg std), else OpenAI CLIP's {OPENAI_STD}")
    prompts: tuple[str, ...] = Field(CHEXPERT_PROMPTS, description="disease prompts for prompt-driven attention (eq. 5)")
    prompt_features: Literal["tokens", "pooled"] = Field("tokens", description="per-token prompt features [P, L, C] (eq. 3) or pooled [P, C]")
    init_temperature: float = Field(0.07, gt=0, description="initial σ of the alignment loss (learnable); at least 1/max_logit_scale")
    max_logit_scale: float = Field(100.0, gt=1, le=10_000, description="cap of the learnable logit scale 1/σ (CLIP and open_clip: 100; at most 10,000: larger logits overflow the loss)")
    patch_dropout: float = Field(0.0, ge=0, lt=1, description="FLIP: fraction of image patches dropped at random before the encoder in training (models without an image mask, e.g. the clip preset); 0: none")
    mim: MIMConfig = MIMConfig()
    mlm: MLMConfig = MLMConfig()

    @field_validator("image_std")
    @classmethod
    def _std(cls, v):
        if v is not None and not all(x > 0 for x in v):
            raise ValueError(f"expected 3 numbers > 0 (pixels are divided by them; 0 makes every input inf and every step "
                             f"non-finite), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _temperature(self):
        if self.init_temperature * self.max_logit_scale < 1:
            raise ValueError(f"init_temperature {self.init_temperature} gives a logit scale of {1 / self.init_temperature:.1f}, "
                             f"above max_logit_scale {self.max_logit_scale:g}; expected init_temperature >= {1 / self.max_logit_scale:g}")
        return self


def check_image_path(cfg: ModelConfig, image_masked: bool) -> None:
    """The model keys that depend on whether the experiment masks images (``image_masked``: an
    ``image_mask`` or ``image_only_mask`` tree is set); a ``ValueError`` naming the key otherwise.
    Read by :class:`maskkit.config.ExperimentConfig` and by :class:`~maskkit.model.XLIP` itself."""
    if cfg.patch_dropout > 0 and image_masked:
        raise ValueError(f"model.patch_dropout={cfg.patch_dropout:g} drops patches at random for a model without an image mask "
                         f"(FLIP, the clip baseline); this experiment masks images: set model.patch_dropout=0 or "
                         f"image_mask=null and image_only_mask=null")
    if cfg.mim.placement == "sparse" and not image_masked:
        raise ValueError("model.mim.placement=sparse encodes only the visible patches of an image mask, but image_mask and "
                         "image_only_mask are null; set an image mask (e.g. preset=xlip-sparse) or model.patch_dropout for random dropping")
