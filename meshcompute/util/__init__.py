"""Utilities shaped like ``ray.util``.

``ActorPool`` and the placement group functions are here; the modules
``multiprocessing`` (``Pool``), ``futures`` (``MeshExecutor``), ``queue``
(``Queue``), ``joblib`` (``register_mesh``, ``register_ray``), ``state``
(``list_actors``, ``list_tasks``, ...) and ``scheduling_strategies`` are
attributes too, imported on first use so that ``import meshcompute`` stays
light (and joblib is needed only by ``register_mesh``).
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

_SUBMODULES = ("futures", "joblib", "multiprocessing", "queue", "scheduling_strategies", "state")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))


__all__ = ["ActorPool", "PlacementGroup", "get_placement_group", "placement_group", "placement_group_table",
           "remove_placement_group"]
