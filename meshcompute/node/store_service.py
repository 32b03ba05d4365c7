"""The STORE_* messages, answered from the store table.

The table (meshcompute/store/table.py) decides everything about objects; this
service only turns messages into table calls and the table's replies into
messages, and remembers which peer daemons pulled copies of our primaries (so
that freeing a primary frees them too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ..store.pages import CHECK_PERIOD_S, PagePool
from ..store.shm import ArenaWarmer
from ..store.table import Copy, StoreTable
from ..wire.messages import Msg
from .config import default_prefault, default_warm_linger, default_warm_pool

log = logging.getLogger("meshcompute.daemon")


class StoreService:
    """Owns the store table of this node and the record of copies pulled from it.

    Invariants:
      * every reply the table returns is sent, in order, right after the call
        (or the completion of a copy) that produced it; a reply whose req_id is
        a callable is the daemon's own request, answered by calling it;
      * ``copy_holders[oid]`` lists the daemons that pulled a copy of our
        primary ``oid``; they hear STORE_FREE when it is freed here.
    """

    def __init__(self, table: StoreTable, node_id: str, send: Callable[..., None],
                 peer_address: Callable[[str], str | None]) -> None:
        self.table = table
        self.node_id = node_id
        self.send = send
        self.peer_address = peer_address  # a live peer daemon's address by node id
        self.copy_holders: dict[bytes, set[str]] = {}  # daemons that pulled our primaries
        self.warmer: ArenaWarmer | None = None
        self._next_page_check = 0.0

    # ------------------------------------------------------------ arena pages

    def start_warming(self, path: str) -> None:
        """Pre-allocate the arena's low region in the background and keep it (and a warm pool
        sized to recent allocations) resident; every other freed page goes back to the kernel."""
        capacity = self.table.capacity
        prefault = default_prefault(capacity)
        self.table.pages = PagePool(capacity, floor=prefault, pool_max=default_warm_pool(capacity),
                                    linger=default_warm_linger(capacity))
        pages = self.table.pages
        self.warmer = ArenaWarmer(path, prefault, on_zeroed=lambda n: setattr(pages, "zeroed", n))
        self.warmer.start()

    def stop_warming(self) -> None:
        if self.warmer is not None:
            self.warmer.stop()

    def tick(self, now: float) -> None:
        """The loop's timed duty: return free pages beyond the warm pool (store/pages.py)."""
        if now >= self._next_page_check:
            self._next_page_check = now + CHECK_PERIOD_S
            try:
                self.send_replies(self.table.return_pages(now))
            except OSError as err:  # the arena's file system cannot say which pages it holds
                log.warning("freed arena pages stay resident: %s", err)
                self._next_page_check = float("inf")

    def send_replies(self, replies: list) -> None:
        for peer, req_id, value in replies:
            if callable(req_id):
                req_id(value)
            else:
                self.send(peer, Msg.REPLY, req_id, value)
        # Allocations that wait for processes to let go of the pins they keep.
        for peer, oids in self.table.releases.take():
            self.send(peer, Msg.STORE_RELEASE, oids)

    def use_copier(self, submit: Copy) -> None:
        """Run the table's spill and restore copies through ``submit`` (helper threads)
        from now on; what their completions decide is answered right after them."""

        def copy(job, done) -> None:
            def finished(result, error) -> None:
                done(result, error)
                self.send_replies(self.table.take_replies())

            submit(job, finished)

        self.table.copy = copy

    def create_local(self, oid: bytes, size: int, owner: str, creator: str,
                     answer: Callable[[tuple], None]) -> None:
        """A secondary copy for this daemon itself (a pull): ``answer`` gets the table's reply."""
        self.send_replies(self.table.request_create(oid, size, owner, creator, creator, answer, primary=False))

    # ---------------------------------------------------------------- messages

    def on_store_create(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, oid, size, owner = msg
        # Answered now, or once spills made room (the loop goes on meanwhile).
        self.send_replies(self.table.request_create(oid, size, owner, sender, sender, req_id))

    def on_store_seal(self, sender: str, msg: tuple, frames: list) -> None:
        _, oid, keep_pinned = msg
        self.send_replies(self.table.seal(oid, sender if keep_pinned else None))

    def is_remote(self, oid: bytes, source: Any) -> bool:
        """Whether a pin must pull the object from ``source`` (a ``(node_id, size)`` or None) first."""
        obj = self.table.objects.get(oid)
        return (obj is None or obj.freed) and bool(source) and source[0] != self.node_id

    def pin(self, oid: bytes, reader: str, req_id: Any, keep: bool = False) -> None:
        """Pin for ``reader``; ``keep``: a process's pin, kept until it lets go (or is asked to)."""
        self.send_replies(self.table.pin(oid, reader, req_id, keep))

    def on_store_unpin(self, sender: str, msg: tuple, frames: list) -> None:
        _, oids, reason = msg
        self.send_replies(self.table.unpin_many(list(oids), sender, reason))

    def on_store_free(self, sender: str, msg: tuple, frames: list) -> None:
        _, oids, node_id, unpinned = msg
        if unpinned:  # the owner's own kept pins, here, go with the free
            self.send_replies(self.table.unpin_many(list(unpinned), sender))
        if node_id and node_id != self.node_id:
            address = self.peer_address(node_id)
            if address:
                self.send(address, Msg.STORE_FREE, oids, node_id, ())
            return
        for oid in oids:
            # Copies pulled from ours go with the primary.
            for holder in self.copy_holders.pop(oid, ()):
                self.send(holder, Msg.STORE_FREE, (oid,), None, ())
        self.send_replies(self.table.free(oids))

    def process_gone(self, addr: str) -> None:
        """A process is gone: the primaries it owned are freed, and, as on STORE_FREE, the
        copies other daemons pulled of them (theirs name our daemon, not the dead owner)."""
        for oid, obj in list(self.table.objects.items()):
            if obj.owner == addr and oid in self.copy_holders:
                for holder in self.copy_holders.pop(oid):
                    self.send(holder, Msg.STORE_FREE, (oid,), None, ())
        self.send_replies(self.table.process_gone(addr))

    # --------------------------------------------------------------- reporting

    def statistics(self) -> dict:
        stats = asdict(self.table.statistics())
        # How much of the arena's warm region is pre-allocated so far; what was punched out.
        stats["prefaulted_bytes"] = self.warmer.done if self.warmer is not None else 0
        stats["zeroed_bytes"] = self.warmer.zeroed if self.warmer is not None else 0
        stats.update(self.table.pages.statistics())
        return stats

    def object_records(self, pid_of: Callable[[str], int | None]) -> list[dict]:
        """One dict per object (LIST_OBJECTS); ``pid_of``: a local process's pid by address."""
        out = []
        table = self.table
        for obj in list(table.objects.values()) + list(table.retired):
            out.append({
                "object_id": obj.object_id.hex(), "size": obj.size, "owner": obj.owner,
                "owner_pid": pid_of(obj.owner), "node_id": self.node_id,
                "primary": obj.primary, "sealed": obj.sealed, "freed": obj.freed,
                "pins": sum(obj.pins.values()), "readers": len(obj.pins),
                "in_memory": obj.offset is not None, "spilled": obj.spill_path is not None,
                "spill_bytes": obj.spill_bytes,
            })
        return out
