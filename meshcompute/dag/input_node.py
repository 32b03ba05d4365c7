"""Ray's ``ray.dag.input_node`` module path (``from ray.dag.input_node import InputNode``)."""

from __future__ import annotations

from ..api.dag import DAGInputData, InputAttributeNode, InputNode

__all__ = ["InputNode", "InputAttributeNode", "DAGInputData"]
