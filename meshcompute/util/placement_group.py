"""Placement groups, as in Ray: reserve resources in bundles across nodes, all at once.

::

    from meshcompute.util import placement_group, remove_placement_group
    from meshcompute.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    mesh.get(pg.ready())                     # both bundles reserved, on two nodes
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1)).remote()
    remove_placement_group(pg)               # frees them; work still running in it is stopped

The reservation is committed through the control store: the leader chooses a
node for every bundle, each node reserves its bundles or refuses, and the group
is CREATED only once every bundle is reserved (a refusal returns all of them
and the leader tries again). If a node holding bundles dies, those bundles are
placed again elsewhere. Strategies: ``PACK`` (as few nodes as possible),
``SPREAD`` (different nodes where possible), ``STRICT_PACK`` (one node),
``STRICT_SPREAD`` (a different node for each bundle).
"""

from __future__ import annotations

from typing import Any

from ..api.session import _core
from ..owner.object_ref import ObjectRef
from ..wire import ids

__all__ = ["PlacementGroup", "placement_group", "remove_placement_group", "placement_group_table",
           "get_placement_group"]

_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class PlacementGroup:
    """A handle to a placement group (it can be passed to tasks and actors)."""

    def __init__(self, pg_id: str, bundles: list[dict[str, float]]) -> None:
        self.id = pg_id
        self.bundle_specs = bundles

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves (to this group) once every bundle is reserved.

        ``get`` on it raises PlacementGroupRemovedError if the group is removed first.
        """
        return _core().gcs_promise(("pg_wait", self.id), None, convert=lambda record: self)

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Block until the group is ready; False if it is not within ``timeout_seconds``."""
        from ..api.session import get
        from ..exceptions import GetTimeoutError

        try:
            get(self.ready(), timeout=timeout_seconds)
            return True
        except GetTimeoutError:
            return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id}, bundles={self.bundle_specs})"


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None) -> PlacementGroup:
    """Ask for ``bundles`` (a list of resource dicts, e.g. ``[{"CPU": 2}, {"GPU": 1}]``).

    Returns at once; ``ready()`` tells when the reservation is done. A group no
    node set can hold stays pending until nodes that can join.
    """
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(_STRATEGIES)}; got {strategy!r}")
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("bundles must be a non-empty list of resource dicts, e.g. [{'CPU': 1}]")
    clean = []
    for i, b in enumerate(bundles):
        if not isinstance(b, dict) or not b:
            raise ValueError(f"bundle {i} must be a non-empty dict of resources, got {b!r}")
        for k, v in b.items():
            if not isinstance(k, str) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"bundle {i}: {k!r}: {v!r} is not a resource amount")
        if all(v == 0 for v in b.values()):
            raise ValueError(f"bundle {i} asks for nothing: {b!r}")
        clean.append({k: float(v) for k, v in b.items() if v > 0})
    if lifetime not in (None, "detached"):
        raise ValueError("lifetime must be None or 'detached'")
    core = _core()
    pg_id = ids.random_id(8)
    core.gcs_request(("pg_create", pg_id, clean, strategy, name, core.address))
    return PlacementGroup(pg_id, clean)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Release the group's bundles; tasks and actors running in it are stopped."""
    _core().gcs_request(("pg_remove", placement_group.id))


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """The group's record (state, strategy, bundles, the node of each bundle), or every group's."""
    core = _core()
    if placement_group is not None:
        return core.gcs_request(("pg_get", placement_group.id)) or {}
    return core.gcs_request(("pg_table",))


def get_placement_group(name: str) -> PlacementGroup:
    """The live placement group called ``name``; ValueError if there is none."""
    for rec in _core().gcs_request(("pg_table",)).values():
        if rec["name"] == name and rec["state"] != "REMOVED":
            bundles = [rec["bundles"][i] for i in sorted(rec["bundles"])]
            return PlacementGroup(rec["placement_group_id"], bundles)
    raise ValueError(f"no placement group named {name!r}")
