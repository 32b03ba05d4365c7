"""Piggyback dissemination queue (memberlist's TransmitLimitedQueue, pure).

Every rumour a node learns (or originates) is queued once under a *key*
(e.g. ``("m", node)`` for membership state, ``("r", node)`` for the resource
view).  Queueing a new rumour under an existing key drops the old one: newer
information about the same node invalidates older queued items.

Each call to :meth:`BroadcastQueue.take` fills a byte budget with the
rumours transmitted the fewest times so far (fresh first); among equals the
most recently queued goes first.  A rumour is dropped after
``retransmit_limit(mult, N) = mult * ceil(log10(N + 1))`` transmissions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["retransmit_limit", "BroadcastQueue"]

T = TypeVar("T")


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """Transmissions per rumour per node in a cluster of ``n`` members (>= 1)."""
    return max(1, retransmit_mult * math.ceil(math.log10(max(n, 0) + 1)))


class _Item(Generic[T]):
    __slots__ = ("id", "key", "msg", "size", "transmits")

    def __init__(self, iid: int, key: Hashable, msg: T, size: int) -> None:
        self.id = iid
        self.key = key
        self.msg = msg
        self.size = size
        self.transmits = 0


class BroadcastQueue(Generic[T]):
    """Transmit-limited, key-invalidated rumour queue."""

    def __init__(self, retransmit_mult: int, num_nodes: Callable[[], int]) -> None:
        self.retransmit_mult = retransmit_mult
        self._num_nodes = num_nodes
        self._by_key: dict[Hashable, _Item[T]] = {}
        # transmits -> {item id -> item}; ids grow with enqueue order
        self._buckets: dict[int, dict[int, _Item[T]]] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._by_key

    def enqueue(self, key: Hashable, msg: T, size: int) -> None:
        """Queue ``msg`` (``size`` bytes on the wire) replacing any item with ``key``."""
        old = self._by_key.pop(key, None)
        if old is not None:
            self._remove_from_bucket(old)
        self._next_id += 1
        item = _Item(self._next_id, key, msg, size)
        self._by_key[key] = item
        self._buckets.setdefault(0, {})[item.id] = item

    def discard(self, key: Hashable) -> None:
        old = self._by_key.pop(key, None)
        if old is not None:
            self._remove_from_bucket(old)

    def clear(self) -> None:
        self._by_key.clear()
        self._buckets.clear()

    def _remove_from_bucket(self, item: _Item[T]) -> None:
        b = self._buckets.get(item.transmits)
        if b is not None:
            b.pop(item.id, None)
            if not b:
                del self._buckets[item.transmits]

    def take(self, budget: int, max_items: int = 256) -> list[T]:
        """Pop up to ``budget`` bytes of rumours (fewest transmissions first, newest first)."""
        if not self._by_key or budget <= 0:
            return []
        limit = retransmit_limit(self.retransmit_mult, self._num_nodes())
        chosen: list[_Item[T]] = []
        free = budget
        for t in sorted(self._buckets):
            bucket = self._buckets[t]
            for iid in sorted(bucket, reverse=True):
                item = bucket[iid]
                if item.size <= free:
                    chosen.append(item)
                    free -= item.size
                    if len(chosen) >= max_items:
                        break
            if len(chosen) >= max_items or free < 16:
                break
        out: list[T] = []
        for item in chosen:
            out.append(item.msg)
            self._remove_from_bucket(item)
            item.transmits += 1
            if item.transmits >= limit:
                del self._by_key[item.key]
            else:
                self._buckets.setdefault(item.transmits, {})[item.id] = item
        return out

    def transmits(self, key: Hashable) -> int | None:
        """How often the item under ``key`` was sent, or None if not queued."""
        item = self._by_key.get(key)
        return None if item is None else item.transmits
