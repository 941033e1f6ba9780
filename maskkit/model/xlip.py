"""XLIP: CLIP towers + AttMIM + EntMLM, returning features and masks (eq. 1-13).

Data flow (docs/model.md draws it): images -> ViT -> E_img; reports -> text tower -> E_report;
disease prompts -> text tower -> E_prompt. The configured image strategy masks E_img (paired
samples: e.g. report ∪ prompt ∪ self; image-only samples: prompt ∪ self); the MAE decoder
reconstructs the masked patches. The text mask (entity ∩ causal) drives the multimodal text
decoder, which cross-attends E_img. In ``mim.placement=sparse`` (issue 21) E_img is a
low-resolution view of the whole image, the masks read it, and a second, full-resolution pass
encodes only the visible patches for the decoder (docs/model.md). The losses (eq. 14-16) live in :mod:`maskkit.objectives`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..compose import build_strategy
from ..core import MaskContext
from ..errors import MaskkitError
from ..masking import STREAMS, check_mask, mask_generator, role_context
from ..roles import IMAGE_ROLES, ROLES, role_error
from .config import ModelConfig, check_image_path
from .mim import MIMDecoder, visible_positions
from .mlm import TextDecoder
from .output import XLIPOutput
from .hf_text import load_text_folder, transformers_folder
from .towers import (create_clip, image_tokens, load_pretrained, patchify, text_is_causal, text_tokens, text_width,
                     tokenizer_note, tower_tokenizer, unpatchify)
from .weights import arch_file, architecture, hub_notes, preprocessing


def write_record(record: dict, folder) -> None:
    """Write a :meth:`XLIP.build_record` into the empty ``folder`` as an open_clip folder without
    weights (``open_clip_config.json``; an HF tower's ``config.json`` and tokenizer files, with
    ``hf_model_name`` naming the folder), for ``XLIP(..., arch_folder=folder)``."""
    import json
    from pathlib import Path

    folder = Path(folder)
    mc = json.loads(record["model_cfg"])
    if "hf_config" in record:
        (folder / "config.json").write_text(record["hf_config"], encoding="utf-8")
        for name, data in record.get("tokenizer", {}).items():
            (folder / Path(name).name).write_bytes(data.numpy().tobytes())
        mc["text_cfg"].update(hf_model_name=str(folder), hf_tokenizer_name=str(folder))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": mc, "preprocess_cfg": {}}), encoding="utf-8")


def _preprocess_from_buffers(model, incompatible) -> None:
    """After a state dict is loaded: ``preprocess_mean`` / ``preprocess_std`` follow the loaded
    ``image_mean`` / ``image_std`` buffers (what the run trained with, whatever its folder holds now)."""
    for name in ("mean", "std"):
        buf = [float(f"{v:.7g}") for v in getattr(model, f"image_{name}").flatten().tolist()]  # float32's digits
        if any(abs(a - b) > 1e-6 for a, b in zip(buf, getattr(model, f"preprocess_{name}"))):
            setattr(model, f"preprocess_{name}", tuple(buf))


class XLIP(nn.Module):
    """CLIP towers + AttMIM decoder + EntMLM text decoder: ``forward(batch, seed) -> XLIPOutput``.

    The forward returns features and masks (:class:`~maskkit.model.output.XLIPOutput`), no
    losses and no collectives: the objectives (:mod:`maskkit.objectives`) own those. (The one
    exception: a conv stem's :class:`~maskkit.model.towers.GlobalBatchNorm2d` all-reduces its
    statistics in training mode under DDP, on every rank at every forward.) Every row
    runs through the same computation whatever the batch holds (paired, image-only or both), so
    the autograd graph is the same at every step: paired rows are masked by ``image_mask``
    (eq. 14), image-only rows by ``image_only_mask`` (eq. 15), chosen row by row with
    ``torch.where``; the objectives ignore what does not apply to a row.

    ``image_mask``, ``image_only_mask`` and ``text_mask`` are strategy trees (the experiment's
    top-level keys, the only place they are configured); ``XLIP.from_experiment(cfg)`` builds
    the model of an :class:`~maskkit.config.ExperimentConfig`. ``model.pretrained`` naming an
    open_clip HF-hub folder builds the towers from its ``model_cfg`` (:mod:`maskkit.model.weights`);
    ``weights=False`` builds them without reading the weights (a checkpoint is loaded next).
    """

    def __init__(self, config: ModelConfig | None = None, *, image_mask: Any = None, image_only_mask: Any = None,
                 text_mask: Any = None, weights: bool = True, arch_folder: str | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ModelConfig()
        if arch_folder is not None:  # a checkpoint's own record of its towers (build_record), model.pretrained unread
            if weights:
                raise MaskkitError("XLIP: arch_folder builds a checkpoint's towers, whose weights come next; pass weights=False")
            text_folder, (self.arch, self.hub) = None, architecture(cfg.arch, arch_folder)
        else:
            text_folder = transformers_folder(cfg.pretrained) if cfg.pretrained else None  # an HF text tower's weights
            # an open_clip folder is the architecture; a transformers folder is the text tower of model.arch
            self.arch, self.hub = (cfg.arch, None) if text_folder is not None else architecture(cfg.arch, cfg.pretrained)
        if cfg.pretrained and weights and cfg.patch_embed != "linear":  # resolve() gives the same line (A66)
            raise MaskkitError(f"model.patch_embed={cfg.patch_embed} with model.pretrained={cfg.pretrained}: a convolutional "
                               f"stem replaces the pretrained patch embedding, whose weights would be dropped; set "
                               f"model.patch_embed=linear")
        self.clip = create_clip(self.arch, cfg.patch_embed, text_tower=text_folder,
                                hub_dir=self.hub.path if self.hub is not None else None)
        self.load_report = None
        if cfg.pretrained and weights:
            self.load_report = (load_text_folder(self.clip, text_folder) if text_folder is not None
                                else load_pretrained(self.clip, cfg.pretrained))
            if self.hub is not None:
                self.load_report += hub_notes(self.hub, cfg)
            self.load_report += "".join(f"; {n}" for n in self.clip.maskkit_notes)
        v = self.clip.visual
        self.patch = v.patch_size[0]
        self.grid = tuple(v.grid_size)
        self.image_size = v.image_size[0]
        #: the normalisation (mean, std) of the replicated channels: model.image_mean/std, else the folder's (A62)
        self.preprocess_mean, self.preprocess_std, notes = preprocessing(cfg, self.hub, self.image_size)
        if self.load_report is not None:
            self.load_report += notes
        self.embed_dim = C = v.output_dim
        self.tokenizer = tower_tokenizer(self.clip)
        if self.load_report is not None:
            self.load_report += "".join(f"; {n}" for n in [tokenizer_note(self.clip, self.tokenizer)] if n)
        self.context_length = self.tokenizer.context_length
        self.register_buffer("image_mean", torch.tensor(self.preprocess_mean).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(self.preprocess_std).view(1, 3, 1, 1))
        self.register_load_state_dict_post_hook(_preprocess_from_buffers)  # a checkpoint's mean/std are the run's
        self.register_buffer("_key_coef", report_key_coefficients(self.context_length), persistent=False)
        self.clip.logit_scale.data.fill_(math.log(1 / cfg.init_temperature))
        trees = {"image_mask": image_mask, "image_only_mask": image_only_mask, "text_mask": text_mask}
        built = {k: build_strategy(t, k) if t is not None else None for k, t in trees.items()}
        self.image_mask, self.image_only_mask, self.text_mask = built["image_mask"], built["image_only_mask"], built["text_mask"]
        for role in ROLES:  # what each tree may hold: maskkit.roles
            why = role_error(role, built[role.name])
            if why:
                raise MaskkitError(why)
        try:
            check_image_path(cfg, self.image_mask is not None or self.image_only_mask is not None)
        except ValueError as exc:
            raise MaskkitError(str(exc)) from None
        g = cfg.mim.lowres_scale
        self.lowres_grid = (max(1, round(self.grid[0] * g)), max(1, round(self.grid[1] * g)))
        self.decoder = MIMDecoder(C, self.grid, self.patch, cfg.mim.decoder_width, cfg.mim.decoder_depth, cfg.mim.decoder_heads) \
            if (self.image_mask is not None or self.image_only_mask is not None) else None
        self.text_decoder = TextDecoder(C, self.tokenizer.vocab_size, self.context_length, cfg.mlm.layers, cfg.mlm.heads) \
            if self.text_mask is not None else None
        if self.text_mask is not None and cfg.mlm.mode in ("loss", "causal") and not text_is_causal(self.clip):
            raise MaskkitError(f"model.mlm.mode={cfg.mlm.mode}: the text tower of {arch_file(self.arch) or cfg.arch} is bidirectional, so the clean E_report at "
                               f"position t-1 has seen token t, the target; use model.mlm.mode=input")
        self.mask_id = mask_token_id(cfg.mlm.mask_token, self.tokenizer) if self.text_mask is not None and cfg.mlm.mode == "input" else None
        self.mask_embedding = nn.Parameter(torch.zeros(text_width(self.clip))) \
            if self.text_mask is not None and cfg.mlm.mode == "input" and self.mask_id is None else None
        enc = self.tokenizer(list(cfg.prompts))
        self._prompt_ids = enc[:int(enc.valid.sum(1).max())]  # prompts are short: encode only their real length
        self._needs_prompts = any(s is not None and "prompt_tokens" in s.all_requires for s in built.values())

    @classmethod
    def from_experiment(cls, cfg, weights: bool = True, arch_folder: str | None = None) -> XLIP:
        """The model of an :class:`~maskkit.config.ExperimentConfig` (its ``model`` and strategy trees);
        ``weights=False`` leaves ``model.pretrained``'s weights unread (a checkpoint replaces them);
        ``arch_folder`` (with ``weights=False``) is the folder :func:`write_record` made of a
        checkpoint's :meth:`build_record`, which then gives the towers instead of ``model.pretrained``."""
        return cls(cfg.model, **{k: cfg.strategy(k) for k in STREAMS}, weights=weights, arch_folder=arch_folder)  # the trees the config built

    def build_record(self) -> dict:
        """What rebuilds these towers without ``model.pretrained``'s folder (a run's checkpoints
        store it; :func:`write_record` reads it): ``model_cfg`` (JSON of the open_clip model config
        the towers were built from), and for an HF text tower ``hf_config`` (JSON of its
        transformers config) and ``tokenizer`` (its files, name -> uint8 tensor of the bytes)."""
        import json
        import tempfile
        from pathlib import Path

        from .hf_text import is_hf_tower

        rec = {"model_cfg": json.dumps(self.clip.maskkit_model_cfg)}
        if is_hf_tower(self.clip):
            rec["hf_config"] = self.clip.text.config.to_json_string()
            with tempfile.TemporaryDirectory() as d:
                self.tokenizer.tok.save_pretrained(d)
                rec["tokenizer"] = {p.name: torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8).clone()
                                    for p in sorted(Path(d).iterdir()) if p.is_file()}
        return rec

    # --- pieces --------------------------------------------------------------------------
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Grayscale ``[B, 1, H, W]`` in [0, 1] -> replicated, normalised ``[B, 3, H, W]`` (CheXzero)."""
        if images.dim() != 4 or images.shape[0] == 0:
            raise MaskkitError(f"the batch holds no image (images tensor of shape {tuple(images.shape)}); were all its "
                               f"samples skipped? A batch former must drop or replace skipped samples")
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise MaskkitError(f"images are {tuple(images.shape[-2:])} px; model.arch {self.config.arch} expects {self.image_size} px "
                               f"(set data.image_size={self.image_size})")
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return (x - self.image_mean) / self.image_std

    def encode_image(self, images: torch.Tensor):
        """(pooled ``[B, C]``, E_img ``[B, N, C]``) of grayscale images in [0, 1]."""
        return image_tokens(self.clip, self.normalise(images))

    def mask_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The image tokens ``[B, N, C]`` the image mask trees see in training, for grayscale images
        in [0, 1]: E_img of the full image, or in ``mim.placement=sparse`` the low-resolution view's
        tokens on the full grid (:meth:`guide_tokens`). ``maskkit eval masks`` measures masks on these."""
        x = self.normalise(images)
        if self.config.mim.placement == "sparse":
            return self.guide_tokens(x)
        return image_tokens(self.clip, x)[1]

    def lowres_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The low-resolution view of ``mim.placement=sparse``: (pooled ``[B, C]``, tokens
        ``[B, n, C]``) of the normalised images ``x`` ``[B, 3, H, W]`` resized (bilinear,
        antialiased) to ``self.lowres_grid`` patches (``mim.lowres_scale`` of each side; ``n`` =
        its token count) and encoded by the image tower with its position embeddings resampled to
        that grid (CLIPA's low-resolution training). With gradient: it trains the alignment loss
        and is EntMLM's image memory; its detached tokens are the guidance (:meth:`upsample_tokens`)."""
        import torch.nn.functional as F

        gh, gw = self.lowres_grid
        if (gh, gw) != self.grid:
            x = F.interpolate(x, size=(gh * self.patch, gw * self.patch), mode="bilinear", align_corners=False, antialias=True)
        return image_tokens(self.clip, x)

    def upsample_tokens(self, tok: torch.Tensor) -> torch.Tensor:
        """Low-resolution tokens ``[B, gh*gw, C]`` on the full token grid ``[B, N, C]`` (bilinear), where
        the image mask trees read them."""
        import torch.nn.functional as F

        gh, gw = self.lowres_grid
        if (gh, gw) == self.grid:
            return tok
        B, _, C = tok.shape
        grid = tok.transpose(1, 2).reshape(B, C, gh, gw)
        return F.interpolate(grid, size=self.grid, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)

    @torch.no_grad()
    def guide_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The guidance of ``mim.placement=sparse`` for normalised images ``x``: the low-resolution
        view's tokens (:meth:`lowres_tokens`) on the full grid (:meth:`upsample_tokens`), ``[B, N, C]``,
        without gradient. Training computes the same from its gradient pass, detached."""
        return self.upsample_tokens(self.lowres_tokens(x)[1])

    def hide_pixels(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, 3, H, W]`` with the pixels of the masked patches (``mask`` ``[B, N]``) set to 0,
        the normalised mean: a convolutional stem would otherwise carry them into the visible
        tokens through its receptive field; for the linear embedding this changes nothing."""
        hidden = unpatchify(mask[:, :, None].expand(-1, -1, self.patch ** 2), self.patch, *self.grid)  # [B, 1, H, W]
        return x.masked_fill(hidden, 0.0)

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

    def mask_contexts(self, e_img: torch.Tensor, e_rep: torch.Tensor, rep_valid: torch.Tensor,
                      entities: torch.Tensor | None, seed: int) -> dict[str, MaskContext]:
        """The :class:`MaskContext` of each configured strategy tree, for every row of a batch.

        What each tree sees is its role's ``inputs`` (:data:`maskkit.roles.ROLES`, through
        :func:`maskkit.masking.role_context`: ``image_only_mask`` has no report, eq. 15).
        Features are detached: masks steer, they do not learn.
        Each tree draws from its own stream of :func:`maskkit.masking.mask_generator` for ``seed``.
        This is the one builder that training, ``eval masks`` and ``visualize`` use.
        """
        dev = e_img.device
        prompts = prompt_valid = None
        if self._needs_prompts:
            prompts, prompt_valid = self.prompt_features(dev)
            prompts = prompts.to(e_img.dtype)
        img, rep = e_img.detach(), e_rep.detach()
        ents = entities.to(dev) if entities is not None else None
        inputs = dict(image_tokens=img, report_tokens=rep, report_valid=rep_valid, entities=ents,
                      prompt_tokens=prompts, prompt_valid=prompt_valid)
        return {role: role_context(role, mask_generator(seed, role, dev), **inputs)  # what each role sees: maskkit.roles
                for role in STREAMS if getattr(self, role) is not None}

    def image_masks(self, contexts: dict[str, MaskContext], paired: torch.Tensor) -> torch.Tensor:
        """The AttMIM mask ``[B, N]`` bool: ``image_mask`` on paired rows, ``image_only_mask`` on the
        others (a row whose tree is null is not masked). Each strategy's output is checked."""
        B, N = paired.shape[0], self.grid[0] * self.grid[1]
        none = torch.zeros(B, N, dtype=torch.bool, device=paired.device)
        masks = {k: check_mask(getattr(self, k)(contexts[k]), getattr(self, k), (B, N), k) if k in contexts else none
                 for k in IMAGE_ROLES}
        return torch.where(paired[:, None], masks["image_mask"], masks["image_only_mask"])

    def mlm_hidden(self, ids: torch.Tensor, valid: torch.Tensor, ctx: MaskContext, image_tokens: torch.Tensor,
                   e_rep: torch.Tensor):
        """EntMLM's decoder pass: (hidden ``[B, T, C]``, selected ``[B, T]`` bool).

        ``mlm.mode=input`` re-encodes the report with the selected tokens replaced by the
        tokenizer's mask token (``self.mask_id``, BERT's ``[MASK]``) or the learned mask embedding
        (``model.mlm.mask_token``); ``loss`` feeds the clean E_report (causal towers only);
        ``causal`` feeds the clean E_report to a decoder whose self-attention is strictly causal
        (the text mask only picks the targets: position ``t-1`` predicts a selected token ``t``
        from the clean tokens before it, which a causal text tower's features cannot hold; A58).
        """
        B, T = ids.shape
        attn = check_mask(self.text_mask(ctx), self.text_mask, (B, T, T), "text_mask")  # True = may not attend
        selected = _selected_positions(attn)
        mode = self.config.mlm.mode
        if mode == "input" and self.mask_id is not None:
            _, dec_in = text_tokens(self.clip, ids.masked_fill(selected & valid, self.mask_id))
        elif mode == "input":
            _, dec_in = text_tokens(self.clip, ids, replace=selected, mask_embedding=self.mask_embedding)
        else:
            dec_in = e_rep
        if mode == "causal":
            attn = torch.ones(T, T, dtype=torch.bool, device=ids.device).triu(1).expand(B, T, T)
        return self.text_decoder(dec_in, image_tokens, attn, ~valid), selected

    def reconstruct(self, x: torch.Tensor, e_img: torch.Tensor, mask: torch.Tensor,
                    visible: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """AttMIM's decoder output ``[B, N, P]`` for the mask ``[B, N]`` (``mim.placement``).

        ``feature`` (eq. 9): the decoder sees the full-image features with masked ones replaced.
        ``input`` (MAE): the encoder runs again on the visible patches only; rows may keep
        different counts (padding plus a key-padding mask), so no masked patch reaches the encoder.
        The masked patches' pixels are set to 0 (the normalised mean) first (:meth:`hide_pixels`).
        ``sparse``: ``e_img`` already holds the visible tokens at ``visible`` = (``keep``,
        ``keep_valid``) (the forward's full-resolution pass). ``mim.decoder_queries=masked`` runs
        :meth:`MIMDecoder.forward_masked` (MILAN), else :meth:`MIMDecoder.forward_visible`.
        """
        if self.config.mim.placement == "feature":
            return self.decoder(e_img, mask)
        if visible is None:
            keep, keep_valid = visible_positions(mask)           # visible patches first, in position order
            _, e_img = image_tokens(self.clip, self.hide_pixels(x, mask), keep=keep, keep_valid=keep_valid)
        else:
            keep, keep_valid = visible
        if self.config.mim.decoder_queries == "masked":
            return self.decoder.forward_masked(e_img, keep, keep_valid, mask)
        return self.decoder.forward_visible(e_img, keep, mask.shape[1], keep_valid)

    def dropped_patches(self, B: int, seed: int, device) -> torch.Tensor:
        """FLIP's patch dropout (``model.patch_dropout``): ``[B, K]`` long, the patch indices each row
        keeps, ``K = max(1, round((1 - patch_dropout) · N))`` drawn uniformly per row (in position
        order) from the step's ``patch_dropout`` stream of :func:`maskkit.masking.mask_generator`."""
        N = self.grid[0] * self.grid[1]
        K = max(1, round((1 - self.config.patch_dropout) * N))
        u = torch.rand(B, N, generator=mask_generator(seed, "patch_dropout", device), device=device)
        return u.argsort(1)[:, :K].sort(1).values

    # --- forward -------------------------------------------------------------------------
    def tune_frozen(self) -> list[nn.Parameter]:
        """The parameters the unmasked tune (``train.unmasked_tune``) leaves unchanged: every one
        outside the CLIP towers (the MIM decoder, the text decoder, a learned mask embedding)."""
        return [p for n, p in self.named_parameters() if not n.startswith("clip.")]

    def forward(self, batch: dict, seed: int = 0, tune: bool = False) -> XLIPOutput:
        """batch: ``images [B,1,H,W]``, ``text [B,T]``, ``text_valid [B,T]``, ``paired [B]`` and
        ``entities [B,T]``. ``seed`` is the step's mask seed (:func:`maskkit.masking.mask_seed`).

        ``tune``: a step of the unmasked full-resolution tune that may end a run
        (``train.unmasked_tune``, FLIP/CLIPA; A64): the image tower encodes every patch of the
        full-resolution image (no mask, no ``patch_dropout``, no low-resolution view) and the
        output holds the alignment's features only (a CLIP step's cost). In training under a process
        group of several ranks the :meth:`tune_frozen` parameters enter the output with weight 0, so
        that DDP sees every parameter in the graph at every step (the recipe then drops their zero
        gradients).

        The output's ``text_key`` (which rows hold the same report) is derived from the token ids
        (:func:`report_keys`), the one rule for every batch, micro-batch and rank, so keys of
        different batches never collide; a batch that brings its own ``text_key`` is refused
        (:class:`~maskkit.errors.MaskkitError`)."""
        if "text_key" in batch:
            raise MaskkitError("batch['text_key']: XLIP derives each row's report identity from its token ids "
                               "(maskkit.model.xlip.report_keys); remove text_key from the batch")
        images = batch["images"]
        dev = images.device
        paired = batch["paired"].to(dev)
        ids = batch["text"].to(dev)
        valid = batch["text_valid"].to(dev)
        key = report_keys(ids, valid, paired, self._key_coef)
        x = self.normalise(images)
        if tune:
            pooled_img, _ = image_tokens(self.clip, x)
            pooled_txt, _ = text_tokens(self.clip, ids)
            from ..distributed import process_group_size

            frozen = self.tune_frozen() if self.training and process_group_size() > 1 else []
            if frozen:  # weight 0: in DDP's graph, no effect on any value (one process: not needed, not paid)
                pooled_img = pooled_img + 0.0 * torch.stack([p.reshape(-1)[0] for p in frozen]).sum().to(pooled_img.dtype)
            return XLIPOutput(pooled_img, pooled_txt, paired, key, self.clip.logit_scale)
        sparse = self.config.mim.placement == "sparse"
        visible = None
        if sparse:  # the low-resolution view: alignment, EntMLM's memory and (detached) the guidance
            pooled_img, e_img = self.lowres_tokens(x)
            pooled_txt, e_rep = text_tokens(self.clip, ids)
            ctx = self.mask_contexts(self.upsample_tokens(e_img), e_rep, valid, batch.get("entities"), seed)
            mask = self.image_masks(ctx, paired)
            visible = visible_positions(mask)   # the full-resolution pass encodes these patches only
            _, e_vis = image_tokens(self.clip, self.hide_pixels(x, mask), keep=visible[0], keep_valid=visible[1])
        else:
            keep = self.dropped_patches(x.shape[0], seed, x.device) if self.training and self.config.patch_dropout > 0 else None
            pooled_img, e_img = image_tokens(self.clip, x, keep=keep)
            pooled_txt, e_rep = text_tokens(self.clip, ids)
        out = XLIPOutput(pooled_img, pooled_txt, paired, key, self.clip.logit_scale)
        if self.decoder is None and self.text_decoder is None:
            return out
        if not sparse:
            ctx = self.mask_contexts(e_img, e_rep, valid, batch.get("entities"), seed)
        if self.decoder is not None:
            out.mim_mask = mask if sparse else self.image_masks(ctx, paired)
            out.mim_pred = self.reconstruct(x, e_vis if sparse else e_img, out.mim_mask, visible)
            out.mim_target = patchify(images[:, :1], self.patch)
        if self.text_decoder is not None:
            hidden, selected = self.mlm_hidden(ids, valid, ctx["text_mask"], e_img, e_rep)
            targets = selected & valid & paired[:, None]
            sel = targets[:, 1:]                                 # position t-1 predicts token t
            out.mlm_logits = self.text_decoder.head(hidden[:, :-1][sel])
            out.mlm_labels = ids[:, 1:][sel]
            out.mlm_selected = selected
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """``train.grad_checkpointing``: recompute the activations of both towers' blocks (open_clip's
        ``set_grad_checkpointing``) and of the MIM decoder's blocks in the backward instead of
        storing them. Changes memory and time, never a value. An HF text tower's transformers model
        is switched on or off by transformers' own calls: open_clip's ``HFTextEncoder.set_grad_checkpointing``
        ignores its argument and always switches it on."""
        from .hf_text import is_hf_tower, set_hf_checkpointing

        if is_hf_tower(self.clip):
            self.clip.visual.set_grad_checkpointing(enable)
            set_hf_checkpointing(self.clip.text.transformer, enable)
        else:
            self.clip.set_grad_checkpointing(enable)
        if self.decoder is not None:
            self.decoder.grad_checkpointing = enable

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clamp the learnable logit scale to ``[0, log(max_logit_scale)]`` in place (CLIP, open_clip);
        the training loop calls it after every optimiser step."""
        self.clip.logit_scale.clamp_(0, math.log(self.config.max_logit_scale))


@torch.no_grad()
def reconstruct_text(model: XLIP, batch: dict, seed: int = 0) -> list[dict]:
    """EntMLM's view of each paired report: the selected (masked) positions and the decoder's
    top-1 prediction for each, with the masks training draws for the same ``seed``."""
    if model.text_decoder is None:
        raise MaskkitError("this model has no text decoder (text_mask is null)")
    dev = next(model.parameters()).device
    ids = batch["text"].to(dev)
    valid = batch["text_valid"].to(dev)
    _, e_img = model.encode_image(batch["images"].to(dev))
    _, e_rep = model.encode_text(ids)
    ctx = model.mask_contexts(e_img, e_rep, valid, batch.get("entities"), seed)
    hidden, selected = model.mlm_hidden(ids, valid, ctx["text_mask"], e_img, e_rep)
    selected = selected & valid
    pred = model.text_decoder.head(hidden[:, :-1]).argmax(-1)  # position t-1 predicts token t
    out = []
    for row in torch.nonzero(batch["paired"]).flatten().tolist():
        pos = torch.nonzero(selected[row, 1:]).flatten() + 1
        out.append({"index": row, "positions": pos.tolist(), "truth": ids[row, pos].tolist(),
                    "predicted": pred[row, pos - 1].tolist()})
    return out


# two primes below 2**26: a key h1 * P2 + h2 is below 2**52, exact in float64 (the alignment loss
# gathers keys with the features as float64 rows)
_KEY_PRIMES = (67108859, 67108837)


def report_key_coefficients(length: int) -> torch.Tensor:
    """The fixed coefficients of :func:`report_keys`: int64 ``[2, length]``, each row in
    ``[1, P)`` for its prime ``P`` (from a fixed NumPy generator; no global RNG)."""
    import numpy as np

    rng = np.random.default_rng(20240917)
    return torch.from_numpy(np.stack([rng.integers(1, p, size=length) for p in _KEY_PRIMES]).astype(np.int64))


def report_keys(ids: torch.Tensor, valid: torch.Tensor, paired: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """The identity of each row's report, ``[B]`` long: equal token ids (as the text tower sees
    them: ``ids`` ``[B, T]`` where ``valid`` ``[B, T]``) give equal keys; a row without a report
    (``paired`` False) gets -1. ``coef`` is :func:`report_key_coefficients` (``[2, >= T]``).

    Two hashes ``sum_t (id_t + 1) c_t mod P`` with fixed random coefficients ``c_t`` and primes
    ``P`` below 2**26 (ids reduced mod ``P`` first, so products stay below 2**52 and a sum over up
    to 2**11 positions fits int64), combined into one key below 2**52, exact in float64. It depends on the report alone, never on the row's position, batch, micro-batch or
    rank, so the alignment loss can compare keys of rows gathered from all of them (A26); two
    different reports share a key with probability about 2**-52. No host sync."""
    if ids.shape[1] > coef.shape[1]:
        raise MaskkitError(f"text: {ids.shape[1]} token positions, more than the model's context length {coef.shape[1]}")
    x = (ids.long() + 1) * valid.long()                                  # 0 at padding, >= 1 at a token
    c = coef[:, : ids.shape[1]].to(ids.device)
    h1 = (x % _KEY_PRIMES[0] * c[0]).sum(1) % _KEY_PRIMES[0]
    h2 = (x % _KEY_PRIMES[1] * c[1]).sum(1) % _KEY_PRIMES[1]
    return torch.where(paired.bool(), h1 * _KEY_PRIMES[1] + h2, torch.full_like(h1, -1))


def mask_token_id(choice: str, tokenizer) -> int | None:
    """The id that hides a selected token (``model.mlm.mask_token``), or None for the learned
    embedding: ``tokenizer`` needs a mask token, ``auto`` takes it when there is one (BERT's
    ``[MASK]``; CLIP's BPE has none)."""
    if choice == "learned" or (choice == "auto" and tokenizer.mask_id is None):
        return None
    if tokenizer.mask_id is None:
        raise MaskkitError(f"model.mlm.mask_token=tokenizer: the text tower's tokenizer ({tokenizer.name}) has no mask "
                           f"token; use model.mlm.mask_token=learned or auto")
    return tokenizer.mask_id


def _selected_positions(attn: torch.Tensor) -> torch.Tensor:
    """The positions whose token is reconstructed: those hidden from some earlier query.

    For ``positional ∩ causal`` that is exactly the positional selection; for a plain causal mask
    it is every position but the first (captioning).
    """
    return attn.any(dim=1)
