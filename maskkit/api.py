"""``maskkit.load``: a trained model for Python code.

    import maskkit

    model = maskkit.load("runs/xlip-base-seed0")          # a run, a checkpoint, or an exported open_clip folder
    img = model.encode_image(["a.png", "b.dcm"])            # [2, C], L2-normalised
    txt = model.encode_text(["pleural effusion"])           # [1, C]
    p = model.zero_shot(["a.png"], ["Pleural Effusion", "Cardiomegaly"])   # [1, 2] probabilities
    m = model.similarity_map("a.png", "left pleural effusion")              # [G, G] patch map

Images are file paths (every format maskkit decodes: PNG of any bit depth, JPEG, DICOM, ...),
Pillow images, numpy arrays or tensors; each becomes what training fed the model: grayscale in
[0, 1] (:mod:`maskkit.data.images`), resized to the model's size (antialiased bilinear, aspect
not kept), replicated to 3 channels and normalised inside the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MaskkitError


def load(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """The model of a run directory (its latest checkpoint), a checkpoint file, or an open_clip
    HF-hub folder (``maskkit export --format open_clip``'s, or any open_clip ViT CLIP's), in eval
    mode on ``device``. One-line :class:`~maskkit.errors.MaskkitError` for anything else."""
    from .model.weights import HUB_CONFIG, hub_folder

    p = Path(path).expanduser()
    _check_loadable(p)
    if p.is_dir() and (p / HUB_CONFIG).is_file():
        from .model import XLIP, ModelConfig

        hub_folder(p)  # its config and weights file, or one line
        xlip, run_cfg = XLIP(ModelConfig(pretrained=str(p))), None  # the folder's preprocess_cfg mean/std (A62)
    else:
        from .training.checkpointing import load_model

        xlip, run_cfg = load_model(p)
    return Model(xlip.to(device).eval(), run_cfg, p)


_WHAT_LOADS = "expected a run directory, a checkpoint file (checkpoints/step_*.pt) or an open_clip folder"


def _check_loadable(p: Path) -> None:
    """One line naming what is missing when ``p`` is not something :func:`load` reads."""
    from .model.weights import HF_CONFIG, HUB_CONFIG
    from .training.checkpointing import run_checkpoints

    if not p.exists():
        raise MaskkitError(f"maskkit.load: {p} does not exist; {_WHAT_LOADS}")
    if not p.is_dir() or (p / HUB_CONFIG).is_file() or run_checkpoints(p):
        return
    if (p / "checkpoints").is_dir():
        raise MaskkitError(f"maskkit.load: {p} is a run directory without checkpoints (no step_*.pt in "
                           f"{p / 'checkpoints'}; a run writes one every train.ckpt_every steps and at its end)")
    if (p / HF_CONFIG).is_file():
        raise MaskkitError(f"maskkit.load: {p} has {HF_CONFIG} but no {HUB_CONFIG}: a timm or transformers folder (one "
                           f"tower), not a CLIP; {_WHAT_LOADS} (a timm image tower goes in model.pretrained)")
    raise MaskkitError(f"maskkit.load: {p} is not a run directory (no checkpoints/step_*.pt) nor an open_clip folder "
                       f"(no {HUB_CONFIG}); {_WHAT_LOADS}")


ImageLike = Any  # a path, a PIL image, an array / tensor [H, W], [1, H, W] or [3, H, W], or a batch [B, 1|3, H, W]


class Model:
    """A loaded model: :meth:`encode_image`, :meth:`encode_text`, :meth:`zero_shot`,
    :meth:`similarity_map`. ``xlip`` is the :class:`~maskkit.model.XLIP`, ``config`` the run's
    :class:`~maskkit.config.ExperimentConfig` (None for an open_clip folder). No gradients."""

    def __init__(self, xlip, config, source: Path) -> None:
        self.xlip, self.config, self.source = xlip, config, source

    def __repr__(self) -> str:
        return f"maskkit.Model({self.source}, {self.image_size} px, {self.xlip.embed_dim}-dim embeddings)"

    @property
    def device(self) -> torch.device:
        return self.xlip.image_mean.device

    @property
    def image_size(self) -> int:
        return self.xlip.image_size

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid ``(G_h, G_w)`` of :meth:`similarity_map`."""
        return self.xlip.grid

    # --- inputs ----------------------------------------------------------------------------------
    def images(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """``[B, 1, S, S]`` float32 in [0, 1] at the model's size ``S`` on its device: what training
        feeds the model. A path is decoded (:func:`maskkit.data.images.read_image`), a PIL image
        converted (:func:`~maskkit.data.images.pil_pixels`), an array / tensor taken as pixel values
        (uint8: 0-255, uint16: 0-65535, float: [0, 1]; 3 channels: BT.601 luma); each is resized
        (:func:`~maskkit.data.images.resize_batch`). A list gives a batch."""
        if isinstance(images, (list, tuple)):
            if not images:
                raise MaskkitError("images: an empty list; expected at least one image")
            return torch.cat([self.images(im) for im in images])
        from .data.images import resize_batch

        x = _pixels(images)
        return resize_batch(x, self.image_size).clamp(0, 1).to(self.device)

    def _warn_cut(self, texts: list[str], where: str) -> None:
        """One :class:`~maskkit.errors.MaskkitWarning` per call naming how many of ``texts`` are longer
        than the model's context (the tokens past it are not encoded), none when no text is."""
        import warnings

        from .errors import MaskkitWarning

        tok = self.xlip.tokenizer
        specials = int(tok([""]).valid[0].sum())  # start and end tokens around every text
        room = tok.context_length - specials
        n = sum(len(tok.encode_with_offsets(t)[0]) > room for t in texts)
        if n:
            warnings.warn(f"{where}: {n} of {len(texts)} text{'s' if len(texts) > 1 else ''} longer than the model's "
                          f"context of {tok.context_length} tokens ({room} after its special tokens) "
                          f"{'was' if n == 1 else 'were'} cut to it; the rest is not encoded", MaskkitWarning, stacklevel=3)

    # --- embeddings --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: ImageLike | Sequence[ImageLike], normalize: bool = True) -> torch.Tensor:
        """``[B, C]`` float32 image embeddings (L2-normalised unless ``normalize=False``)."""
        pooled, _ = self.xlip.encode_image(self.images(images))
        return F.normalize(pooled.float(), dim=-1) if normalize else pooled.float()

    @torch.no_grad()
    def encode_text(self, texts: str | Sequence[str], normalize: bool = True) -> torch.Tensor:
        """``[B, C]`` float32 text embeddings of reports or prompts (the model's tokenizer; text past
        its context length is cut), L2-normalised unless ``normalize=False``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise MaskkitError(f"texts: expected a string or a non-empty list of strings, got {texts!r:.80}")
        self._warn_cut(texts, "encode_text")
        pooled, _ = self.xlip.encode_text(self.xlip.tokenizer(texts).ids.to(self.device))
        return F.normalize(pooled.float(), dim=-1) if normalize else pooled.float()

    @torch.no_grad()
    def zero_shot(self, images: ImageLike | Sequence[ImageLike], labels: Sequence[str], **protocol) -> torch.Tensor:
        """``[B, K]`` float probability of each of ``labels`` per image, by the protocol of
        ``maskkit eval zeroshot`` (:func:`maskkit.eval.zeroshot.probabilities`: a softmax over
        the positive and negative prompts of each label; ``No Finding`` the absence of the others).
        ``protocol``: that function's ``no_finding``, ``absence_ignore``, ``style``."""
        from .eval.zeroshot import probabilities

        labels = [labels] if isinstance(labels, str) else list(labels)
        if not labels:
            raise MaskkitError("labels: expected at least one label name")
        emb = self.encode_image(images).cpu()
        return torch.from_numpy(probabilities(self.xlip, emb, labels, self.device, **protocol))

    @torch.no_grad()
    def similarity_map(self, image: ImageLike | Sequence[ImageLike], text: str | Sequence[str]) -> torch.Tensor:
        """The patch-level map the grounding evaluation scores (:func:`maskkit.eval.grounding.patch_similarity`):
        the cosine similarity of each patch token to the text embedding, ``[G_h, G_w]`` float32 for
        one image, ``[B, G_h, G_w]`` for a list or batch. ``text``: a phrase, or a list of prompts
        whose normalised embeddings are averaged (the grounding evaluation's finding prompts:
        ``maskkit.eval.zeroshot.prompt_pair(label)[0]``). Upsample by nearest neighbour to overlay it
        on the image (what the grounding metrics score)."""
        from .eval.grounding import patch_similarity
        from .eval.zeroshot import text_embeddings

        x = self.images(image)
        _, tokens = self.xlip.encode_image(x)
        prompts = [text] if isinstance(text, str) else list(text)
        self._warn_cut(prompts, "similarity_map")
        sim = patch_similarity(tokens, text_embeddings(self.xlip, prompts, self.device).to(self.device))
        maps = sim.reshape(-1, *self.grid).cpu()
        single = not isinstance(image, (list, tuple)) and not (isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 4)
        return maps[0] if single else maps


def _pixels(image: ImageLike) -> torch.Tensor:
    """One image (or a ``[B, C, H, W]`` batch) as float32 ``[B, 1, H, W]`` in [0, 1], unresized."""
    from .data.images import LUMA, pil_pixels, read_image

    if isinstance(image, (str, Path)):
        return torch.from_numpy(read_image(image))[None, None]
    if hasattr(image, "mode") and hasattr(image, "getbands"):  # a PIL image
        return torch.from_numpy(pil_pixels(image, "image"))[None, None]
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise MaskkitError(f"image: a {type(image).__name__}; expected a file path, a PIL image, a numpy array or a tensor")
    t = image.detach().cpu()
    scale = {torch.uint8: 255.0, torch.int16: 65535.0, torch.int32: 65535.0, torch.uint16: 65535.0}.get(t.dtype)
    if scale is None and not t.is_floating_point():
        raise MaskkitError(f"image: tensor of dtype {t.dtype}; expected uint8, 16-bit integers or floats in [0, 1]")
    t = t.float() / scale if scale else t.float()
    if scale is None and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise MaskkitError(f"image: float tensor with {bad} NaN or infinite value{'s' if bad > 1 else ''} of {t.numel()}; "
                           f"expected finite values in [0, 1]")
    if scale is None and t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
        raise MaskkitError(f"image: float tensor with values in [{float(t.min()):g}, {float(t.max()):g}]; expected [0, 1] "
                           f"(or a uint8 / 16-bit integer tensor of raw pixel values)")
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise MaskkitError(f"image: tensor of shape {tuple(image.shape)}; expected [H, W], [1|3, H, W] or [B, 1|3, H, W]")
    if t.shape[1] == 3:  # colour: BT.601 luma, as the file decoders do
        t = torch.einsum("bchw,c->bhw", t, torch.tensor(LUMA, dtype=torch.float32))[:, None]
    return t
