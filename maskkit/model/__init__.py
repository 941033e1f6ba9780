"""The XLIP model: open_clip towers, AttMIM decoder, EntMLM text decoder and losses."""

from .config import CHEXPERT_PROMPTS, MIMConfig, MLMConfig, ModelConfig
from .output import XLIPOutput
from .xlip import XLIP

__all__ = ["CHEXPERT_PROMPTS", "MIMConfig", "MLMConfig", "ModelConfig", "XLIP", "XLIPOutput"]
