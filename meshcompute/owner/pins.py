"""The store pins a process keeps: where each store object it reads lies, held in place.

Reading a store object needs its place in the arena and the daemon's promise
that it stays there while values built on it live (a pin).  Asking for both on
every get costs a round trip; instead a process keeps the pin it got (for its
own ``put``, the one its seal took) and serves later gets of the object from its
own mapping of the arena, with no message and no new mapping.

A kept pin is *in use* while a value built on it is alive: the values of one
object are built on one *exporter*, a read-only uint8 numpy array over the
object's bytes in the process's mapping of the arena.  Every view sliced from
it, and every array deserialized on those, holds it (the buffer protocol names
the exporter as the owner of the memory), so a weakref reports when the last
value is gone.  (A ``memoryview`` slice or a ``PickleBuffer`` would not do: they
name the arena's mapping as the owner, which lives as long as the process.)
A pin is let go when it is idle and

* the process holds no ref to the object any more (``let_go``, called by the
  object table; when the owner frees the object, its STORE_FREE carries the
  unpin), or the last value built on it dies with no ref left (``value_gone``);
* or the daemon needs room and asks (STORE_RELEASE, ``release_idle``).

Pins in use are never let go.  A kept place is never stale: a pinned object
does not move, and once the pin is let go the next get pins again (the daemon
answers where the object is then, restoring it if it was spilled meanwhile).

Gets run on user threads, releases on the I/O thread: every decision takes the
lock.  Unpins to send wait in ``take_unpins`` (one STORE_UNPIN per I/O turn).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from typing import Any


class _Pin:
    __slots__ = ("offset", "size", "user", "unwanted", "used")

    def __init__(self, offset: int, size: int, used: int) -> None:
        self.offset = offset
        self.size = size
        self.used = used  # when it was last read (a counter): what the daemon spills first
        self.user: weakref.ref | None = None  # the exporter values are built on, while any lives
        self.unwanted = False  # the object is lost to this process: let go once idle, refs or not

    def idle(self) -> bool:
        return self.user is None or self.user() is None


class PinCache:
    """Object id -> the place of a store object this process holds one daemon pin of.

    Invariant: each entry stands for exactly one pin at the daemon, and an entry
    whose exporter is alive is never removed (values read its block).
    """

    def __init__(self, arena: memoryview, referenced: Callable[[bytes], bool],
                 on_value_gone: Callable[[bytes, weakref.ref], None]) -> None:
        self._arena = arena  # a read-only view of this process's mapping of the whole arena
        self._referenced = referenced  # whether the process holds a ref to an object (any thread)
        self._on_value_gone = on_value_gone  # runs where an exporter dies: hands it to value_gone
        self._lock = threading.Lock()
        self._pins: dict[bytes, _Pin] = {}
        self._unpins: list[bytes] = []
        self._clock = itertools.count()
        self._np: Any = None  # numpy, imported by the first read of a store object

    def _numpy(self) -> None:
        if self._np is None:
            import numpy  # a dependency, but not every process reads the store: not at start

            self._np = numpy

    def close(self) -> None:
        """Release the view of the arena (BufferError while values built on it live)."""
        self._arena.release()

    def __len__(self) -> int:
        return len(self._pins)

    def __contains__(self, oid: bytes) -> bool:
        return oid in self._pins

    def view(self, oid: bytes) -> Any:
        """The bytes of a kept object, to build a value on (the pin is in use while it lives); None if not kept."""
        if oid not in self._pins:
            return None
        self._numpy()
        with self._lock:
            pin = self._pins.get(oid)
            return None if pin is None else self._exporter(oid, pin)

    def add(self, oid: bytes, offset: int, size: int, use: bool) -> tuple[Any, bool]:
        """Keep a pin just taken; with ``use``, the exporter to build a value on.

        Returns ``(exporter, kept)``: ``kept`` is False when another thread kept a
        pin of the object meanwhile: the caller unpins its own (one pin is enough).
        """
        if use:
            self._numpy()
        with self._lock:
            pin = self._pins.get(oid)
            kept = pin is None
            if kept:
                pin = self._pins[oid] = _Pin(offset, size, next(self._clock))
            return (self._exporter(oid, pin) if use else None), kept

    def _exporter(self, oid: bytes, pin: _Pin) -> Any:
        pin.used = next(self._clock)
        exporter = pin.user() if pin.user is not None else None
        if exporter is None:
            exporter = self._np.frombuffer(self._arena, self._np.uint8, pin.size, pin.offset)
            # While the process holds a ref, the pin stays: nothing to decide (let_go will).
            referenced, notify = self._referenced, self._on_value_gone
            pin.user = weakref.ref(exporter, lambda ref: (referenced(oid) and not pin.unwanted) or notify(oid, ref))
        return exporter

    def value_gone(self, oid: bytes, ref: weakref.ref) -> None:
        """The values built on ``ref``'s exporter are gone (I/O thread): unpin unless a ref is held."""
        with self._lock:
            pin = self._pins.get(oid)
            if pin is None or pin.user is not ref or (self._referenced(oid) and not pin.unwanted):
                return  # let go already, in use again (a newer exporter), or still referenced
            del self._pins[oid]
            self._unpins.append(oid)

    def let_go(self, oid: bytes, for_good: bool = False) -> bool:
        """The process holds no ref to ``oid`` any more (``for_good``: or its refs can never
        read it again: its owner died): drop its pin if idle, else once its values are gone.
        True if dropped now: the caller tells the daemon (with its STORE_FREE, or ``unpin_later``)."""
        with self._lock:
            pin = self._pins.get(oid)
            if pin is not None and for_good:
                pin.unwanted = True
            if pin is None or not pin.idle():
                return False
            del self._pins[oid]
            return True

    def unpin_later(self, oid: bytes) -> None:
        with self._lock:
            self._unpins.append(oid)

    def release_idle(self, oids) -> list[bytes]:
        """The daemon needs room (STORE_RELEASE): drop the idle pins among ``oids``;
        returns those dropped, least recently read first (the daemon spills in
        the order of its unpins).  Pins in use stay."""
        released = []
        with self._lock:
            for oid in oids:
                pin = self._pins.get(oid)
                if pin is not None and pin.idle():
                    del self._pins[oid]
                    released.append((pin.used, oid))
        return [oid for _, oid in sorted(released)]

    def release_all_idle(self) -> list[bytes]:
        """Drop every idle pin (the process disconnects); returns them."""
        return self.release_idle(list(self._pins))

    def take_unpins(self) -> list[bytes]:
        """The unpins decided since the last call (sent in one STORE_UNPIN)."""
        if not self._unpins:
            return []
        with self._lock:
            out, self._unpins = self._unpins, []
        return out
