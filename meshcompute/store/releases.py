"""Asking the processes that keep pins to let go of them when the store needs room.

A process keeps the pin of an object it read or put while it holds a ref to it
(owner/pins.py), so that its next get needs no message.  Such a pin would hold
the object in memory for as long as the ref lives; when an allocation cannot
make room otherwise, the table asks the holders of objects pinned only by kept
pins to let go (STORE_RELEASE) and waits for every answer (STORE_UNPIN,
reason "asked") before it spills what was let go, or says the store is full.  A
process lets go of the pins whose values are not in use; those in use stay, as
a reader's mapping always did.  Each allocation asks at most once.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any


class ReleaseRequests:
    """The STORE_RELEASE requests to send, and the processes whose answers are outstanding."""

    def __init__(self, objects: Callable[[], list], size_of: Callable[[int], int],
                 can_spill: Callable[[], bool]) -> None:
        self.objects = objects  # every object record of the table (retired ones too)
        self.size_of = size_of  # the size of the block at an offset
        self.can_spill = can_spill
        self.outgoing: list[tuple[str, list[bytes]]] = []  # (process, object ids) to send
        self.waiting: collections.Counter = collections.Counter()  # process -> answers outstanding
        self.requests = 0  # allocations that asked (StoreStats.release_requests)

    def ask_once(self, wait: Any, short: int) -> bool:
        """For an allocation (``wait``) that lacks ``short`` bytes of what could move: True
        while answers are outstanding (it waits for them); asks only once per allocation, and
        only if the objects pinned by kept pins alone could leave memory and hold ``short`` bytes."""
        if self.waiting:
            return True
        if wait.asked:
            return False
        can_spill = self.can_spill()
        kept = [o for o in self.objects()
                if o.pins and o.offset is not None and o.sealed and o.moving is None and not o.copies
                and (o.freed or not o.primary or can_spill) and o.kept_by.issuperset(o.pins)]
        if not kept or sum(self.size_of(o.offset) for o in kept) < short:
            return False
        by_process: dict[str, list[bytes]] = {}
        for o in kept:
            for peer in o.pins:
                by_process.setdefault(peer, []).append(o.object_id)
        for peer, oids in by_process.items():
            self.outgoing.append((peer, oids))
            self.waiting[peer] += 1
        wait.asked = True
        self.requests += 1
        return True

    def answered(self, peer: str) -> None:
        if self.waiting[peer] > 1:
            self.waiting[peer] -= 1
        else:
            self.waiting.pop(peer, None)

    def gone(self, peer: str) -> None:
        """A process that died or disconnected answers nothing more."""
        self.waiting.pop(peer, None)

    def take(self) -> list[tuple[str, list[bytes]]]:
        """``(process, object ids)`` to send STORE_RELEASE to; each answers with
        ``StoreTable.unpin_many(..., reason="asked")``."""
        out, self.outgoing = self.outgoing, []
        return out
