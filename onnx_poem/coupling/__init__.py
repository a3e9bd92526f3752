"""Coupling analysis: which channels can be pruned, and together with what."""

from .groups import Activation, ChannelGroup, Consumer, Coupling, Edit, ParamSlice, Unprunable
from .ops.layers import Grouped
from .ops.pad import PadFix
from .ops.reshape import ReshapeFix
from .ops.shuffle import ShuffleFix
from .ops.split import RangeFix
from .trace import find_groups

__all__ = [
    "Activation",
    "ChannelGroup",
    "Consumer",
    "Coupling",
    "Edit",
    "Grouped",
    "PadFix",
    "ParamSlice",
    "RangeFix",
    "ReshapeFix",
    "ShuffleFix",
    "Unprunable",
    "find_groups",
]
