"""The built-in strategies, registered through the same hook a third-party plugin uses."""

from ..hookspecs import hookimpl


@hookimpl
def register_strategies(register):
    from .atypical import Atypical
    from .causal import CausalMask
    from .entity import EntityMask
    from .image_self import ImageSelf
    from .intersect import Intersect
    from .prompt_driven import PromptDriven
    from .random import RandomMask
    from .report_cross import ReportCross
    from .union import Union

    for cls in (RandomMask, ImageSelf, ReportCross, PromptDriven, Union, EntityMask, CausalMask, Intersect, Atypical):
        register(cls)
