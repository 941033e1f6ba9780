"""maskkit: plugin-based masking strategies for masked medical vision-language pretraining.

The mask convention (bool, ``True`` = masked) is stated once, in :mod:`maskkit.core`.
"""

from .compose import build_strategy, load_strategy, to_spec
from .core import CompositeStrategy, MaskContext, MaskStrategy, ScoredStrategy, StrategyConfig
from .errors import MaskkitError
from .hookspecs import hookimpl
from .plugins import get_registry, get_strategy, list_strategies

__version__ = "0.1.0"

__all__ = [
    "CompositeStrategy", "MaskContext", "MaskStrategy", "MaskkitError", "ScoredStrategy", "StrategyConfig",
    "build_strategy", "get_registry", "get_strategy", "hookimpl", "list_strategies", "load_strategy", "to_spec",
]
