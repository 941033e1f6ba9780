"""maskkit: plugin-based masking strategies for masked medical vision-language pretraining.

The mask convention (bool, ``True`` = masked) is stated once, in :mod:`maskkit.core`.

The public names below are imported on first use (PEP 562), so that ``import maskkit`` does not
import torch: the ``maskkit`` command installs its signal handlers before anything slow runs
(:mod:`maskkit.training.preemption`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "build_strategy": "compose", "load_strategy": "compose", "to_spec": "compose",
    "CompositeStrategy": "core", "MaskContext": "core", "MaskStrategy": "core", "ScoredStrategy": "core",
    "StrategyConfig": "core", "MaskkitError": "errors", "hookimpl": "hookspecs",
    "get_registry": "plugins", "get_strategy": "plugins", "list_strategies": "plugins", "load": "api",
}

__all__ = [
    "CompositeStrategy", "MaskContext", "MaskStrategy", "MaskkitError", "ScoredStrategy", "StrategyConfig",
    "build_strategy", "get_registry", "get_strategy", "hookimpl", "list_strategies", "load", "load_strategy", "to_spec",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:
    from .api import load
    from .compose import build_strategy, load_strategy, to_spec
    from .core import CompositeStrategy, MaskContext, MaskStrategy, ScoredStrategy, StrategyConfig
    from .errors import MaskkitError
    from .hookspecs import hookimpl
    from .plugins import get_registry, get_strategy, list_strategies
