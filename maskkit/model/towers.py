"""CLIP towers from open_clip, with token-level features exposed (eq. 1-3).

``ViT-B-16`` (the paper's) and every open_clip config work; maskkit registers small CPU configs
(``maskkit-tiny``: a 4-layer width-192 ViT/16 on 96 px with a 64-token text context;
``maskkit-tiny-p8``: 64 px with 8 px patches). Weights load only from a local file.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MaskkitError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@lru_cache(maxsize=1)
def register_configs() -> None:
    """Add maskkit's small open_clip model configs to open_clip's registry (once)."""
    import open_clip

    folder = resources.files("maskkit.model") / "configs"
    for f in folder.iterdir():
        if f.name.endswith(".json"):
            open_clip.add_model_config(Path(str(f)))


def create_clip(arch: str):
    """An open_clip CLIP of architecture ``arch``, randomly initialised, never downloading."""
    import open_clip

    register_configs()
    if arch not in open_clip.list_models():
        from ..errors import close_matches

        raise MaskkitError(f"model.arch: unknown open_clip architecture '{arch}'{close_matches(arch, open_clip.list_models())}")
    import logging

    class _Quiet(logging.Filter):  # open_clip warns that no pretrained weights were loaded: expected
        def filter(self, record):
            return "No pretrained weights loaded" not in record.getMessage()

    quiet = _Quiet()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(arch, pretrained=None, pretrained_text=False, pretrained_image=False)
    finally:
        logging.getLogger().removeFilter(quiet)
    if not hasattr(model, "token_embedding"):
        raise MaskkitError(f"model.arch: '{arch}' has a custom text tower; maskkit supports CLIP-style towers (e.g. ViT-B-16)")
    if getattr(model.visual, "attn_pool", None) is not None or not hasattr(model.visual, "conv1"):
        raise MaskkitError(f"model.arch: '{arch}' is not a plain ViT image tower; maskkit needs ViT patch tokens")
    return model


def load_pretrained(model: torch.nn.Module, path: str | Path) -> str:
    """Load a local open_clip checkpoint (``.bin``, ``.pt``, ``.pth``, ``.safetensors``) with
    ``weights_only``; returns a one-line report of missing / unexpected keys."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MaskkitError(f"model.pretrained: checkpoint {p} does not exist (maskkit never downloads weights)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MaskkitError(f"model.pretrained: cannot read {p} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MaskkitError(f"model.pretrained: {p} holds a {type(state).__name__}, not a state dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    shape_bad = [k for k, v in state.items() if k in own and hasattr(v, "shape") and v.shape != own[k].shape]
    if shape_bad:
        k = shape_bad[0]
        raise MaskkitError(f"model.pretrained: {p}: '{k}' has shape {tuple(state[k].shape)}, the model expects {tuple(own[k].shape)} "
                           f"({len(shape_bad)} mismatched keys); is model.arch right?")
    res = model.load_state_dict(state, strict=False)
    miss, unexp = list(res.missing_keys), list(res.unexpected_keys)
    loaded = len(state) - len(unexp)
    def few(keys):
        return ", ".join(keys[:3]) + (f", ... ({len(keys)} total)" if len(keys) > 3 else "")
    return (f"loaded {loaded} tensors from {p.name}; missing {len(miss)}" + (f" ({few(miss)})" if miss else "")
            + f"; unexpected {len(unexp)}" + (f" ({few(unexp)})" if unexp else ""))


def image_tokens(clip, x: torch.Tensor, keep: torch.Tensor | None = None, keep_valid: torch.Tensor | None = None):
    """Run the ViT on normalised images ``x [B, 3, H, W]``.

    Returns (pooled ``[B, C]`` projected, E_img ``[B, N, C]`` projected patch tokens, eq. 1).
    With ``keep`` (``[B, K]`` long patch indices), only those patches are encoded (MAE); then
    E_img is ``[B, K, C]`` and the pooled output is that of the visible patches. ``keep_valid``
    (``[B, K]`` bool) marks padding slots of rows that keep fewer than ``K`` patches: no token
    attends to them (a key-padding mask), so they change nothing of the real tokens.
    """
    v = clip.visual
    h = v.conv1(x).flatten(2).transpose(1, 2)  # [B, N, W]
    pos = v.positional_embedding.to(h.dtype)
    h = h + pos[1:]
    if keep is not None:
        h = torch.gather(h, 1, keep.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    cls = (v.class_embedding.to(h.dtype) + pos[0]).expand(h.shape[0], 1, -1)
    h = torch.cat([cls, h], 1)
    h = v.ln_pre(h)
    attn = None
    if keep_valid is not None:
        heads = v.transformer.resblocks[0].attn.num_heads
        keys = torch.cat([keep_valid.new_ones(keep_valid.shape[0], 1), keep_valid], 1)  # CLS is always a key
        attn = torch.zeros(keys.shape[0], 1, keys.shape[1], dtype=h.dtype, device=h.device)
        attn = attn.masked_fill(~keys[:, None, :], float("-inf")).expand(-1, keys.shape[1], -1)
        attn = attn.repeat_interleave(heads, 0)  # [B * heads, K + 1, K + 1], additive
    h = v.transformer(h, attn_mask=attn)
    pooled, tokens = v._pool(h)
    if v.proj is not None:
        pooled = pooled @ v.proj
        tokens = tokens @ v.proj
    return pooled, tokens


def text_tokens(clip, ids: torch.Tensor, replace: torch.Tensor | None = None, mask_embedding: torch.Tensor | None = None):
    """Run the text tower on ids ``[B, L]``: (pooled ``[B, C]``, E_report ``[B, L, C]``, eq. 2).

    With ``replace`` (``[B, L]`` bool), those positions get ``mask_embedding`` instead of their token.
    """
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(ids).to(cast)
    if replace is not None:
        x = torch.where(replace.unsqueeze(-1), mask_embedding.to(cast).expand_as(x), x)
    L = ids.shape[1]
    x = x + clip.positional_embedding[:L].to(cast)
    attn = clip.attn_mask[:L, :L] if clip.attn_mask is not None else None
    x = clip.transformer(x, attn_mask=attn)
    x = clip.ln_final(x)
    from open_clip.transformer import text_global_pool

    pooled = text_global_pool(x, ids, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    proj = clip.text_projection
    if proj is not None:
        if isinstance(proj, torch.nn.Linear):
            pooled, x = proj(pooled), proj(x)
        else:
            pooled, x = pooled @ proj, x @ proj
    return pooled, x


def patchify(img: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, 1, H, W]`` -> ``[B, N, p*p]`` row-major patches (N = H/p * W/p)."""
    B, C, H, W = img.shape
    x = img.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """``[B, N, p*p]`` -> ``[B, 1, h*p, w*p]``."""
    B = x.shape[0]
    return x.reshape(B, h, w, p, p, 1).permute(0, 5, 1, 3, 2, 4).reshape(B, 1, h * p, w * p)
