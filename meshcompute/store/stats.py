"""What a node's store reports: its statistics, and why an object does not fit.

Read from a ``StoreTable`` (table.py) without changing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoreStats:
    """One snapshot of a node's store (NODE_INFO's ``"store"`` entry, as a dict)."""

    capacity: int  # bytes of the arena
    used: int  # bytes of the arena in blocks of objects
    objects: int  # objects held, in memory or spilled (freed but still pinned included)
    pinned_objects: int  # objects mapped by at least one reader
    pinned_bytes: int
    spilled_bytes: int  # bytes of spill files on disk
    spilled_objects: int  # objects with a spill file (some may also be in memory again)
    restores: int  # spilled objects read back into memory
    evictions: int  # secondary copies dropped to make room
    spill_dir: str
    spills: int = 0  # spill files written
    unsealed_objects: int = 0  # objects being written
    created: int = 0
    freed: int = 0
    release_requests: int = 0  # times processes were asked to let go of the pins they keep


def statistics(table: Any) -> StoreStats:
    """The table's snapshot (``StoreTable.statistics``)."""
    everything = list(table.objects.values()) + list(table.retired)
    pinned = [o for o in everything if o.pins]
    return StoreStats(
        capacity=table.capacity,
        used=table.allocator.used - table.pages.punching,  # ranges being punched hold no object
        objects=len(everything),
        pinned_objects=len(pinned),
        pinned_bytes=sum(table.allocator.size_of(o.offset) for o in pinned),
        spilled_bytes=table.spilled_bytes,
        spilled_objects=table.spilled_objects,
        restores=table.counts["restores"],
        evictions=table.counts["evictions"],
        spill_dir=table.spill.path if table.spill else "",
        spills=table.counts["spills"],
        unsealed_objects=sum(1 for o in everything if not o.sealed),
        created=table.counts["created"],
        freed=table.counts["freed"],
        release_requests=table.releases.requests,
    )

def full_message(table: Any, size: int, why: str = "") -> str:
    """Why an object of ``size`` bytes does not fit, and what to do (``StoreFull``'s text)."""
    s = table.statistics()
    in_memory = [o for o in list(table.objects.values()) + list(table.retired) if o.offset is not None]
    writing = sum(table.allocator.size_of(o.offset) for o in in_memory if not o.sealed)
    where = f" to {s.spill_dir}" if s.spill_dir else ""
    spill = (f"{s.spilled_bytes} bytes of {s.spilled_objects} objects are spilled{where}"
             if table.spill is not None else "spilling is off")
    return (f"The object store of node {table.node_id} cannot fit an object of {size} bytes"
            f"{' (' + why + ')' if why else ''}: {s.used} of {s.capacity} bytes are in use by "
            f"{len(in_memory)} objects in memory: {s.pinned_bytes} bytes pinned by "
            f"readers ({s.pinned_objects} objects; pinned objects cannot be spilled) and {writing} bytes "
            f"being written; {spill}. Drop the values you got from get() and the references you no "
            f"longer need, or start with a larger object_store_memory.")
