"""The XLIP model: open_clip towers, AttMIM decoder, EntMLM text decoder and losses.

The names below are imported on first use (PEP 562): ``maskkit.model.config`` (the model's
settings, read by the configuration) imports no torch, timm or open_clip.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the submodule that defines it
_EXPORTS = {"CHEXPERT_PROMPTS": "config", "MIMConfig": "config", "MLMConfig": "config", "ModelConfig": "config",
            "XLIPOutput": "output", "XLIP": "xlip"}

__all__ = ["CHEXPERT_PROMPTS", "MIMConfig", "MLMConfig", "ModelConfig", "XLIP", "XLIPOutput"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'maskkit.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from .config import CHEXPERT_PROMPTS, MIMConfig, MLMConfig, ModelConfig
    from .output import XLIPOutput
    from .xlip import XLIP
