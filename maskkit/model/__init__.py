"""The XLIP model: open_clip towers, AttMIM decoder, EntMLM text decoder and losses.

The names below are imported on first use (PEP 562): ``maskkit.model.config`` (the model's
settings, read by the configuration) imports no torch, timm or open_clip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# public name -> the submodule that defines it
_EXPORTS = {"CHEXPERT_PROMPTS": "config", "MIMConfig": "config", "MLMConfig": "config", "ModelConfig": "config",
            "XLIPOutput": "output", "XLIP": "xlip"}

__all__ = ["CHEXPERT_PROMPTS", "MIMConfig", "MLMConfig", "ModelConfig", "XLIP", "XLIPOutput"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:
    from .config import CHEXPERT_PROMPTS, MIMConfig, MLMConfig, ModelConfig
    from .output import XLIPOutput
    from .xlip import XLIP
