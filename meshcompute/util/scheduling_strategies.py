"""Scheduling strategies, importable as in Ray."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id``; with ``soft=True`` fall back to any node."""

    node_id: str
    soft: bool = False


__all__ = ["NodeAffinitySchedulingStrategy"]
