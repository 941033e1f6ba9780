"""BEiT-style block-wise masking as a maskkit strategy plugin (``blockwise``).

The hook imports the strategy (``strategy.py``, which needs torch) when maskkit asks for
strategies, not when maskkit imports the plugin: ``maskkit eval --help`` and a bad config key
answer without torch (as maskkit's built-in strategies do; docs/plugins.md).
"""

from maskkit import hookimpl


@hookimpl
def register_strategies(register):
    from .strategy import BlockwiseMask

    register(BlockwiseMask)
