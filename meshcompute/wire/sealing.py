"""Sealed frames of the bulk channel: AES-256-GCM under a per-connection key.

The bulk channel (node/bulk.py) carries object chunks on sockets of their own
with ZeroMQ's NULL mechanism: CURVE's per-byte cost held pulls to a third of
raw TCP.  Its messages are sealed here instead, with AES-256-GCM (AES-NI; the
``cryptography`` package), under a key the puller made and handed to the
holder over the CURVE-encrypted control channel (``BULK_OPEN``).

A sealed message is ``[prefix, *boxes]``:

* ``prefix`` (28 bytes, in the clear): ``MAGIC``, the session id (16 random
  bytes, also handed over in BULK_OPEN) and a counter (uint64, big-endian);
* box ``i`` is part ``i`` of the message (a pickled header, a chunk) encrypted
  with nonce ``direction + uint64(counter + i)`` and the prefix as associated
  data: a box moved to another message, position or session fails its tag.

Nonces never repeat: each direction of a session has its own 4-byte nonce
prefix and counter, and a counter is reserved (``PARTS`` per message) before
its message is sealed.  A receiver accepts each counter once, within a window
of ``WINDOW`` messages behind the highest seen (messages are sealed on helper
threads, so they may leave slightly out of order): a replayed message is
refused.  Everything a receiver checks before decrypting costs no allocation.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["BoxBuffers", "InvalidTag", "KEY_BYTES", "MAGIC", "PARTS", "PREFIX", "ReplayWindow",
           "SESSION_ID_BYTES", "Seal", "SealedPart", "TAG_BYTES", "new_key", "new_session_id", "parse_prefix"]

MAGIC = b"MCB1"
PREFIX = struct.Struct(">4s16sQ")
"""magic, session id, counter of the message's first box."""
KEY_BYTES = 32
SESSION_ID_BYTES = 16
TAG_BYTES = 16
"""What GCM adds to each box."""
PARTS = 2
"""Counters one message reserves: a header box and at most one data box."""
WINDOW = 256
"""Messages behind the highest seen that may still arrive (once each)."""
REQUEST = b"req\x00"
"""Nonce prefix of what a puller sends; a holder's answers use ANSWER."""
ANSWER = b"dat\x00"


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def new_session_id() -> bytes:
    return os.urandom(SESSION_ID_BYTES)


def parse_prefix(frame: Any) -> tuple[bytes, int] | None:
    """(session id, counter) of a well-formed prefix frame, else None (nothing allocated
    beyond the two small values)."""
    view = memoryview(frame)
    if view.nbytes != PREFIX.size:
        return None
    magic, sid, counter = PREFIX.unpack(view)
    if magic != MAGIC or counter % PARTS:
        return None
    return sid, counter


# cryptography >= 45 seals and opens into a caller's buffer; older versions allocate.
_HAS_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")
_HAS_DECRYPT_INTO = hasattr(AESGCM, "decrypt_into")


class Seal:
    """One session's key: seals and opens messages.  Stateless beyond the key, so
    sealing and opening may run on helper threads; counters are the caller's."""

    def __init__(self, key: bytes, session_id: bytes) -> None:
        if len(key) != KEY_BYTES or len(session_id) != SESSION_ID_BYTES:
            raise ValueError("a bulk session needs a 32-byte key and a 16-byte id")
        self._aead = AESGCM(key)
        self.session_id = session_id

    def seal(self, direction: bytes, counter: int, parts: list, buffers: BoxBuffers | None = None) -> list:
        """``[prefix, *boxes]`` for ``parts`` (at most PARTS), under counters from ``counter``.
        A part that fits one of ``buffers`` is sealed into it (no allocation)."""
        if not 0 < len(parts) <= PARTS:
            raise ValueError(f"a sealed message has 1 to {PARTS} parts")
        prefix = PREFIX.pack(MAGIC, self.session_id, counter)
        boxes: list = [prefix]
        for i, part in enumerate(parts):
            view = memoryview(part)
            box = buffers.take(view.nbytes + TAG_BYTES) if buffers is not None else None
            if box is None:
                boxes.append(self._aead.encrypt(_nonce(direction, counter + i), view, prefix))
            else:
                self._aead.encrypt_into(_nonce(direction, counter + i), view, prefix, box)
                boxes.append(box)
        return boxes

    def open(self, direction: bytes, counter: int, prefix: Any, boxes: list) -> list[bytes]:
        """The parts of a sealed message; raises InvalidTag if any box was not sealed with
        this key, this direction and this prefix, at its position."""
        first, *rest = self.open_first(direction, counter, prefix, boxes)
        return [first, *(part.open() for part in rest)]

    def open_first(self, direction: bytes, counter: int, prefix: Any, boxes: list) -> list:
        """Like :meth:`open`, but only the first part (the message's header, which says where
        the rest goes) is opened now; the others come as :class:`SealedPart`."""
        if not 0 < len(boxes) <= PARTS:
            raise InvalidTag()
        aad = bytes(prefix)
        # memoryview: cryptography takes buffers, not every object that exports one (zmq.Frame).
        first = self._aead.decrypt(_nonce(direction, counter), memoryview(boxes[0]), aad)
        return [first, *(SealedPart(self._aead, _nonce(direction, counter + i), box, aad)
                         for i, box in enumerate(boxes[1:], 1))]


def _nonce(direction: bytes, counter: int) -> bytes:
    """The AES-GCM nonce of the box sealed under ``counter`` in ``direction`` (12 bytes)."""
    return direction + counter.to_bytes(8, "big")


class SealedPart:
    """A box of a message whose first part was opened (:meth:`Seal.open_first`), opened
    later where its bytes belong: :meth:`open_into` decrypts straight into the
    destination (an object's block), with no buffer in between.  Until it is opened
    nothing in it is trusted; a forged box raises InvalidTag then, having written its
    garbage into the destination, which the caller must discard."""

    __slots__ = ("_aead", "_nonce", "_box", "_aad")

    def __init__(self, aead: AESGCM, nonce: bytes, box: Any, aad: bytes) -> None:
        self._aead = aead
        self._nonce = nonce
        self._box = box
        self._aad = aad

    @property
    def nbytes(self) -> int:
        """Bytes it holds once opened."""
        return max(0, memoryview(self._box).nbytes - TAG_BYTES)

    def open(self) -> bytes:
        return self._aead.decrypt(self._nonce, memoryview(self._box), self._aad)

    def open_into(self, dest: memoryview) -> None:
        """Decrypt into ``dest`` (exactly :attr:`nbytes` long); raises InvalidTag if forged."""
        if _HAS_DECRYPT_INTO:
            self._aead.decrypt_into(self._nonce, memoryview(self._box), self._aad, dest)
        else:
            dest[:] = self.open()


class BoxBuffers:
    """Reused buffers for large boxes, so that sealing a chunk neither allocates nor
    zeroes 8 MiB (``encrypt`` returns new bytes, which cost a third as much again as
    the encryption, in page faults and zeroing).

    :meth:`take` hands out a view of a free buffer; the buffer is free again once
    nothing refers to that view any more (ZeroMQ sends a frame without copying and
    drops its reference when the bytes are written).  At most ``keep`` free buffers
    are kept; :meth:`drop_idle` lets them go when sealing has stopped a while, so an
    idle daemon holds none.  Thread-safe: views are taken on helper threads and
    come back on ZeroMQ's.
    """

    def __init__(self, size: int, keep: int) -> None:
        self.size = size  # bytes of each buffer: the largest box
        self.keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.RLock()  # (a view may be collected, and come back, while it is held)
        self._used = False  # taken since the last drop_idle

    def take(self, nbytes: int) -> memoryview | None:
        """A writable view of ``nbytes`` of a free buffer, or None where ``nbytes`` is not
        worth one (under half a buffer: a chunk's worth is what repeats, and a smaller box
        would hold a whole buffer while it travels), too large, or ``encrypt_into`` is
        missing (cryptography < 45)."""
        if not self.size // 2 <= nbytes <= self.size or not _HAS_ENCRYPT_INTO:
            return None
        with self._lock:
            self._used = True
            buf = self._free.pop() if self._free else None
        if buf is None:
            buf = bytearray(self.size)
        view = memoryview(buf)[:nbytes]
        weakref.finalize(view, self._give_back, buf).atexit = False  # (nothing to give back to then)
        return view

    def _give_back(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)

    def drop_idle(self) -> None:
        """Free the buffers if none was taken since the last call (call it every few seconds)."""
        with self._lock:
            if not self._used:
                self._free.clear()
            self._used = False

    @property
    def free(self) -> int:
        return len(self._free)


class ReplayWindow:
    """Which counters of one direction were accepted: each once, none older than WINDOW
    messages behind the highest (an anti-replay window, as IPsec's and DTLS's)."""

    def __init__(self) -> None:
        self.highest = -1  # message number (counter // PARTS) of the highest accepted
        self.seen = 0  # bit i: message highest - i was accepted

    def fresh(self, counter: int) -> bool:
        n = counter // PARTS
        if n > self.highest:
            return True
        back = self.highest - n
        return back < WINDOW and not (self.seen >> back) & 1

    def accept(self, counter: int) -> bool:
        """Mark ``counter`` accepted; False if it was not fresh (a replay)."""
        if not self.fresh(counter):
            return False
        n = counter // PARTS
        if n > self.highest:
            self.seen = ((self.seen << (n - self.highest)) | 1) & ((1 << WINDOW) - 1)
            self.highest = n
        else:
            self.seen |= 1 << (self.highest - n)
        return True
