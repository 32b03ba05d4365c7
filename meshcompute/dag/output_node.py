"""Ray's ``ray.dag.output_node`` module path (``from ray.dag.output_node import MultiOutputNode``)."""

from __future__ import annotations

from ..api.dag import MultiOutputNode

__all__ = ["MultiOutputNode"]
