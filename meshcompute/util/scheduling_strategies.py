"""Scheduling strategies, importable as in Ray."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id``; with ``soft=True`` fall back to any node."""

    node_id: str
    soft: bool = False


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run in a placement group's bundle ``placement_group_bundle_index`` (-1: any of its bundles).

    The task's or actor's resources come out of the bundle's reservation, so they
    must fit in it. ``placement_group_capture_child_tasks=True`` is not supported
    (child tasks are scheduled normally): pass the strategy to the child tasks.
    """

    placement_group: Any
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None

    def __post_init__(self) -> None:
        if self.placement_group_capture_child_tasks:
            raise ValueError("placement_group_capture_child_tasks=True is not supported: give the child "
                             "tasks this scheduling strategy themselves")


__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
