"""Coupling analysis: which channels can be pruned, and together with what."""

from .groups import Activation, ChannelGroup, Consumer, Coupling, ParamSlice, ReshapeFix, Unprunable
from .trace import find_groups

__all__ = [
    "Activation",
    "ChannelGroup",
    "Consumer",
    "Coupling",
    "ParamSlice",
    "ReshapeFix",
    "Unprunable",
    "find_groups",
]
