"""Utilities shaped like ``ray.util``.

``ActorPool`` and the placement group functions are here; the modules
``multiprocessing`` (``Pool``), ``futures`` (``MeshExecutor``), ``queue``
(``Queue``), ``joblib`` (``register_mesh``, ``register_ray``), ``state``
(``list_actors``, ``list_tasks``, ...), ``accelerators`` and ``scheduling_strategies``
are attributes too, imported on first use so that ``import meshcompute`` stays light
(and joblib is needed only by ``register_mesh``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .actor_pool import ActorPool
from .placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

_SUBMODULES = ("accelerators", "futures", "joblib", "multiprocessing", "queue", "scheduling_strategies", "state")


def get_node_ip_address() -> str:
    """The IP address this process's node serves the mesh on (``mesh start --host``);
    ``127.0.0.1`` for a node that serves this machine only (an embedded one)."""
    from ..api.session import _core
    from ..wire.transport import parse_address

    tcp = parse_address(_core().daemon_addr)[2].replace("tcp://", "")
    return tcp.rpartition(":")[0].strip("[]") or "127.0.0.1"


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))


__all__ = ["ActorPool", "PlacementGroup", "get_node_ip_address", "get_placement_group", "placement_group",
           "placement_group_table", "remove_placement_group"]
