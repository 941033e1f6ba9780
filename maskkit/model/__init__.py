"""The XLIP model: open_clip towers, AttMIM decoder, EntMLM text decoder and losses."""

from .config import CHEXPERT_PROMPTS, MIMConfig, MLMConfig, ModelConfig
from .xlip import XLIP, clip_loss

__all__ = ["CHEXPERT_PROMPTS", "MIMConfig", "MLMConfig", "ModelConfig", "XLIP", "clip_loss"]
