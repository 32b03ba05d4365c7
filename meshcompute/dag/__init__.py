"""Ray's ``ray.dag``: lazy task graphs built with ``.bind()`` and run with ``.execute()``
(see api/dag.py for how they run). Ray's module paths ``ray.dag.input_node`` and
``ray.dag.output_node`` are here too."""

from __future__ import annotations

from ..api.dag import (
    ClassMethodNode,
    ClassNode,
    DAGInputData,
    DAGNode,
    FunctionNode,
    InputAttributeNode,
    InputNode,
    MultiOutputNode,
)

__all__ = ["DAGNode", "FunctionNode", "ClassNode", "ClassMethodNode", "InputNode", "InputAttributeNode",
           "MultiOutputNode", "DAGInputData"]
