"""How placement group bundles appear as resources (the names are Ray's).

A bundle ``i`` of group ``pg`` reserved on a node turns its resources, say
``{"CPU": 2}``, into ``CPU_group_i_pg`` (that bundle) and ``CPU_group_pg``
(any bundle of the group), plus a ``bundle_group_*`` marker so that work that
asks for nothing still lands in the bundle. The client rewrites a task's or
actor's request into these names (remote.py); the daemon reserves them
(control.py) and routes requests by them (daemon.py). One definition here.
"""

from __future__ import annotations

__all__ = ["MARKER_UNITS", "bundle_keys", "group_of", "in_bundle", "is_public", "gpu_amount", "as_requested"]

_MARKER = "bundle_group_"
# units of the marker resource one reserved bundle offers (a request takes 0.001).
MARKER_UNITS = 1000.0
_MARKER_ASK = 0.001


def bundle_keys(pg_id: str, index: int, resource: str) -> tuple[str, str]:
    """(the name of ``resource`` in bundle ``index``, its name in the whole group)."""
    return f"{resource}_group_{index}_{pg_id}", f"{resource}_group_{pg_id}"


def in_bundle(res: dict[str, float], pg_id: str, index: int) -> dict[str, float]:
    """A request for ``res`` rewritten to come out of bundle ``index`` (-1: any bundle) of ``pg_id``."""
    out = {}
    for k, v in list(res.items()) + [("bundle", _MARKER_ASK)]:
        if v <= 0:
            continue
        one, anyone = bundle_keys(pg_id, index, k)
        if index >= 0:
            out[one] = v
        out[anyone] = v
    return out


def group_of(shape: tuple) -> tuple[str, int] | None:
    """(pg_id, bundle index or -1) if a shape asks for a placement group bundle."""
    found = None
    for k, _ in shape:
        if k.startswith(_MARKER):
            parts = k[len(_MARKER):].split("_")
            if len(parts) == 2 and parts[0].isdigit():
                return parts[1], int(parts[0])  # a bundle index wins over the group-wide marker
            if len(parts) == 1:
                found = (parts[0], -1)
    return found


def is_public(resource: str) -> bool:
    """Whether a resource is gossiped and offered to placement: not a node marker, not a bundle's."""
    return not resource.startswith("node:") and "_group_" not in resource


def gpu_amount(shape: tuple) -> float:
    """GPUs a shape needs, also when it asks for them from a placement group bundle."""
    for k, v in shape:
        if k == "GPU" or (k.startswith("GPU_group_") and k.count("_") == 3):
            return v
    return 0.0


def as_requested(shape: tuple) -> dict[str, float]:
    """What a granted shape asked for, in the names the request used (Ray's
    ``get_assigned_resources``): bundle names back to their resource (``CPU_group_0_pg``
    and ``CPU_group_pg`` both mean the ``CPU`` asked for once), without the bundle
    marker and the ``node:<id>`` marker of hard affinity."""
    out: dict[str, float] = {}
    for k, v in shape:
        if k.startswith("node:") or k.startswith(_MARKER):
            continue
        out[k.split("_group_")[0] if "_group_" in k else k] = float(v)
    return out
