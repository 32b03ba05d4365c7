"""Gossip wire messages and their safe binary codec.

Every packet is ``MAGIC(2) VERSION(1) TYPE(1) BODY``; a COMPOUND body carries
several length-prefixed ``TYPE BODY`` parts (piggybacked rumours).  All
integers are big-endian and unsigned.  Field encodings:

* ``u8/u16/u32/u64`` -- fixed width
* ``str8``  -- u8 byte length + UTF-8 (node ids, addresses; max 255 bytes)
* ``blob16`` -- u16 byte length + raw bytes (meta payloads; max 65535 bytes)

:func:`decode` never evaluates anything: it bounds-checks every read and
raises :class:`MalformedPacket` on any malformed, truncated, oversized or
trailing input.  The full layout of each type is in docs/gossip.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Union

from .member import MemberState

__all__ = [
    "MAGIC",
    "WIRE_VERSION",
    "MAX_PACKET_BYTES",
    "MAX_COMPOUND_PARTS",
    "MsgType",
    "MalformedPacket",
    "Ping",
    "PingReq",
    "Ack",
    "Nack",
    "Alive",
    "Suspect",
    "Dead",
    "Leave",
    "Meta",
    "PushPullEntry",
    "PushPull",
    "Compound",
    "Message",
    "encode",
    "decode",
    "part_size",
    "packet_size",
]

MAGIC = b"MG"
WIRE_VERSION = 1
MAX_PACKET_BYTES = 16 * 1024 * 1024  # decode refuses anything larger
MAX_COMPOUND_PARTS = 1024
MAX_PUSH_PULL_ENTRIES = 1_000_000
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF


class MsgType(IntEnum):
    """Wire type identifiers. ONLY APPEND: never renumber, remove or reuse a value."""

    PING = 1
    PING_REQ = 2
    ACK = 3
    NACK = 4
    ALIVE = 5
    SUSPECT = 6
    DEAD = 7
    LEAVE = 8
    META = 9
    PUSH_PULL = 10
    COMPOUND = 11


class MalformedPacket(ValueError):
    """The bytes are not a well-formed gossip packet. The packet must be dropped."""


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class Ping:
    seq: int  # u32, chosen by the prober, echoed in the ack
    target: str  # node id expected at the destination ("" = whoever is there)
    source: str  # prober node id
    source_addr: str  # where the ack goes
    TYPE: ClassVar[MsgType] = MsgType.PING

    def describe(self) -> str:
        return f"ping #{self.seq} {self.source}@{self.source_addr} -> {self.target or '*'}"


@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int  # the origin's probe seq, echoed in the forwarded ack / nack
    target: str
    target_addr: str
    source: str  # origin node id
    source_addr: str  # where forwarded acks and nacks go
    nack: bool  # origin wants a NACK if the target stays silent (Lifeguard)
    TYPE: ClassVar[MsgType] = MsgType.PING_REQ

    def describe(self) -> str:
        return f"ping-req #{self.seq} {self.source} asks to probe {self.target}@{self.target_addr} nack={self.nack}"


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    source: str  # node id of the member that was probed
    TYPE: ClassVar[MsgType] = MsgType.ACK

    def describe(self) -> str:
        return f"ack #{self.seq} from {self.source}"


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int
    source: str  # helper that could not reach the target
    TYPE: ClassVar[MsgType] = MsgType.NACK

    def describe(self) -> str:
        return f"nack #{self.seq} from {self.source}"


@dataclass(frozen=True, slots=True)
class Alive:
    node: str
    addr: str
    incarnation: int  # u32
    TYPE: ClassVar[MsgType] = MsgType.ALIVE

    def describe(self) -> str:
        return f"alive {self.node}@{self.addr} inc={self.incarnation}"


@dataclass(frozen=True, slots=True)
class Suspect:
    node: str
    incarnation: int
    source: str  # accuser
    TYPE: ClassVar[MsgType] = MsgType.SUSPECT

    def describe(self) -> str:
        return f"suspect {self.node} inc={self.incarnation} by {self.source}"


@dataclass(frozen=True, slots=True)
class Dead:
    node: str
    incarnation: int
    source: str  # member whose suspicion timer expired
    TYPE: ClassVar[MsgType] = MsgType.DEAD

    def describe(self) -> str:
        return f"dead {self.node} inc={self.incarnation} by {self.source}"


@dataclass(frozen=True, slots=True)
class Leave:
    node: str  # the leaving member (only it may send this about itself)
    incarnation: int  # bumped by the leaver so it beats its own last ALIVE
    TYPE: ClassVar[MsgType] = MsgType.LEAVE

    def describe(self) -> str:
        return f"leave {self.node} inc={self.incarnation}"


@dataclass(frozen=True, slots=True)
class Meta:
    node: str
    version: int  # u64, strictly increasing per node; newer wins
    payload: bytes  # opaque resource view
    TYPE: ClassVar[MsgType] = MsgType.META

    def describe(self) -> str:
        return f"meta {self.node} v{self.version} ({len(self.payload)} B)"


@dataclass(frozen=True, slots=True)
class PushPullEntry:
    node: str
    addr: str
    incarnation: int
    state: MemberState
    meta_version: int
    meta: bytes

    def describe(self) -> str:
        return f"{self.node}@{self.addr} {self.state.describe()} inc={self.incarnation} meta=v{self.meta_version}"


@dataclass(frozen=True, slots=True)
class PushPull:
    source: str
    source_addr: str
    join: bool  # sender is joining through us
    reply: bool  # this is the answer to a push-pull: do not answer it
    entries: tuple[PushPullEntry, ...]
    TYPE: ClassVar[MsgType] = MsgType.PUSH_PULL

    def describe(self) -> str:
        kind = "reply" if self.reply else ("join" if self.join else "push")
        return f"push-pull {kind} from {self.source}@{self.source_addr}, {len(self.entries)} members"


@dataclass(frozen=True, slots=True)
class Compound:
    parts: tuple[Message, ...]  # never nested compounds
    TYPE: ClassVar[MsgType] = MsgType.COMPOUND

    def describe(self) -> str:
        return "compound[" + "; ".join(p.describe() for p in self.parts) + "]"


Message = Union[Ping, PingReq, Ack, Nack, Alive, Suspect, Dead, Leave, Meta, PushPull, Compound]

# ---------------------------------------------------------------------------- encoding
_B = struct.Struct(">B")
_H = struct.Struct(">H")
_I = struct.Struct(">I")
_Q = struct.Struct(">Q")


def _u32(v: int, name: str) -> bytes:
    if not 0 <= v <= _U32_MAX:
        raise ValueError(f"{name}={v} does not fit u32")
    return _I.pack(v)


def _u64(v: int, name: str) -> bytes:
    if not 0 <= v <= _U64_MAX:
        raise ValueError(f"{name}={v} does not fit u64")
    return _Q.pack(v)


def _str8(s: str, name: str, allow_empty: bool = False) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 255:
        raise ValueError(f"{name} longer than 255 bytes")
    if not b and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return _B.pack(len(b)) + b


def _blob16(b: bytes, name: str) -> bytes:
    if len(b) > 0xFFFF:
        raise ValueError(f"{name} longer than 65535 bytes")
    return _H.pack(len(b)) + bytes(b)


def _entry(e: PushPullEntry) -> bytes:
    return b"".join(
        (
            _str8(e.node, "node"),
            _str8(e.addr, "addr"),
            _u32(e.incarnation, "incarnation"),
            _B.pack(int(e.state)),
            _u64(e.meta_version, "meta_version"),
            _blob16(e.meta, "meta"),
        )
    )


def _body(msg: Message) -> bytes:
    t = type(msg)
    if t is Ping:
        return (
            _u32(msg.seq, "seq")
            + _str8(msg.target, "target", True)
            + _str8(msg.source, "source")
            + _str8(msg.source_addr, "source_addr")
        )
    if t is PingReq:
        return b"".join(
            (
                _u32(msg.seq, "seq"),
                _str8(msg.target, "target"),
                _str8(msg.target_addr, "target_addr"),
                _str8(msg.source, "source"),
                _str8(msg.source_addr, "source_addr"),
                _B.pack(1 if msg.nack else 0),
            )
        )
    if t is Ack or t is Nack:
        return _u32(msg.seq, "seq") + _str8(msg.source, "source")
    if t is Alive:
        return _str8(msg.node, "node") + _str8(msg.addr, "addr") + _u32(msg.incarnation, "incarnation")
    if t is Suspect or t is Dead:
        return _str8(msg.node, "node") + _u32(msg.incarnation, "incarnation") + _str8(msg.source, "source")
    if t is Leave:
        return _str8(msg.node, "node") + _u32(msg.incarnation, "incarnation")
    if t is Meta:
        return _str8(msg.node, "node") + _u64(msg.version, "version") + _blob16(msg.payload, "payload")
    if t is PushPull:
        if len(msg.entries) > MAX_PUSH_PULL_ENTRIES:
            raise ValueError("too many push-pull entries")
        flags = (1 if msg.join else 0) | (2 if msg.reply else 0)
        head = _str8(msg.source, "source") + _str8(msg.source_addr, "source_addr") + _B.pack(flags)
        return head + _I.pack(len(msg.entries)) + b"".join(_entry(e) for e in msg.entries)
    if t is Compound:
        if len(msg.parts) > MAX_COMPOUND_PARTS:
            raise ValueError("too many compound parts")
        chunks = [_H.pack(len(msg.parts))]
        for p in msg.parts:
            if type(p) is Compound:
                raise ValueError("compound messages cannot be nested")
            part = _B.pack(int(p.TYPE)) + _body(p)
            chunks.append(_I.pack(len(part)))
            chunks.append(part)
        return b"".join(chunks)
    raise TypeError(f"not a gossip message: {msg!r}")


def encode(msg: Message) -> bytes:
    """Serialize a message to bytes. Raises ValueError for out-of-range fields."""
    body = _body(msg)  # raises TypeError for non-messages before touching msg.TYPE
    return MAGIC + _B.pack(WIRE_VERSION) + _B.pack(int(msg.TYPE)) + body


# --------------------------------------------------------------------------- sizes
def _s8(s: str) -> int:
    return 1 + len(s.encode("utf-8"))


def _body_size(msg: Message) -> int:
    t = type(msg)
    if t is Alive:
        return _s8(msg.node) + _s8(msg.addr) + 4
    if t is Suspect or t is Dead:
        return _s8(msg.node) + 4 + _s8(msg.source)
    if t is Leave:
        return _s8(msg.node) + 4
    if t is Meta:
        return _s8(msg.node) + 8 + 2 + len(msg.payload)
    if t is Ping:
        return 4 + _s8(msg.target) + _s8(msg.source) + _s8(msg.source_addr)
    if t is PingReq:
        return 4 + _s8(msg.target) + _s8(msg.target_addr) + _s8(msg.source) + _s8(msg.source_addr) + 1
    if t is Ack or t is Nack:
        return 4 + _s8(msg.source)
    return len(_body(msg))


def part_size(msg: Message) -> int:
    """Bytes one message occupies as a part of a COMPOUND packet."""
    return 4 + 1 + _body_size(msg)


COMPOUND_OVERHEAD = len(MAGIC) + 1 + 1 + 2  # header + part count


def packet_size(msg: Message) -> int:
    """Bytes ``encode(msg)`` produces (computed without encoding for simple types)."""
    return len(MAGIC) + 2 + _body_size(msg)


# --------------------------------------------------------------------------- decoding
class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise MalformedPacket("truncated packet")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        if self.pos + 1 > self.end:
            raise MalformedPacket("truncated packet")
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def _fixed(self, s: struct.Struct) -> int:
        if self.pos + s.size > self.end:
            raise MalformedPacket("truncated packet")
        (v,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return int(v)

    def u16(self) -> int:
        return self._fixed(_H)

    def u32(self) -> int:
        return self._fixed(_I)

    def u64(self) -> int:
        return self._fixed(_Q)

    def str8(self, allow_empty: bool = False) -> str:
        n = self.u8()
        if n == 0 and not allow_empty:
            raise MalformedPacket("empty identifier")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedPacket("invalid utf-8") from e

    def blob16(self) -> bytes:
        return bytes(self.take(self.u16()))

    def flag(self) -> bool:
        v = self.u8()
        if v > 1:
            raise MalformedPacket("boolean out of range")
        return v == 1

    @property
    def remaining(self) -> int:
        return self.end - self.pos


_MIN_ENTRY = 2 + 2 + 4 + 1 + 8 + 2


def _decode_body(t: int, r: _Reader, nested: bool) -> Message:
    if t == MsgType.PING:
        return Ping(r.u32(), r.str8(True), r.str8(), r.str8())
    if t == MsgType.PING_REQ:
        return PingReq(r.u32(), r.str8(), r.str8(), r.str8(), r.str8(), r.flag())
    if t == MsgType.ACK:
        return Ack(r.u32(), r.str8())
    if t == MsgType.NACK:
        return Nack(r.u32(), r.str8())
    if t == MsgType.ALIVE:
        return Alive(r.str8(), r.str8(), r.u32())
    if t == MsgType.SUSPECT:
        return Suspect(r.str8(), r.u32(), r.str8())
    if t == MsgType.DEAD:
        return Dead(r.str8(), r.u32(), r.str8())
    if t == MsgType.LEAVE:
        return Leave(r.str8(), r.u32())
    if t == MsgType.META:
        return Meta(r.str8(), r.u64(), r.blob16())
    if t == MsgType.PUSH_PULL:
        source, source_addr, flags = r.str8(), r.str8(), r.u8()
        if flags & ~3:
            raise MalformedPacket("unknown push-pull flags")
        count = r.u32()
        if count > MAX_PUSH_PULL_ENTRIES or count * _MIN_ENTRY > r.remaining:
            raise MalformedPacket("push-pull entry count exceeds packet")
        entries = []
        for _ in range(count):
            node, addr, inc, st = r.str8(), r.str8(), r.u32(), r.u8()
            if st > max(MemberState):
                raise MalformedPacket("unknown member state")
            entries.append(PushPullEntry(node, addr, inc, MemberState(st), r.u64(), r.blob16()))
        return PushPull(source, source_addr, bool(flags & 1), bool(flags & 2), tuple(entries))
    if t == MsgType.COMPOUND:
        if nested:
            raise MalformedPacket("nested compound")
        count = r.u16()
        if count > MAX_COMPOUND_PARTS or count * 5 > r.remaining:
            raise MalformedPacket("compound part count exceeds packet")
        parts: list[Message] = []
        for _ in range(count):
            n = r.u32()
            if n < 1 or n > r.remaining:
                raise MalformedPacket("bad compound part length")
            sub = _Reader(r.buf, r.pos, r.pos + n)
            r.pos += n
            pt = sub.u8()
            if pt not in _KNOWN_TYPES:
                continue  # a newer peer's message type: skip the part, keep the rest
            parts.append(_decode_body(pt, sub, True))
            if sub.remaining:
                raise MalformedPacket("trailing bytes in compound part")
        return Compound(tuple(parts))
    raise MalformedPacket(f"unknown message type {t}")


_KNOWN_TYPES = frozenset(int(t) for t in MsgType)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse one packet. Raises MalformedPacket (only) on any bad input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedPacket(f"expected bytes, got {type(data).__name__}")
    buf = bytes(data)
    if len(buf) > MAX_PACKET_BYTES:
        raise MalformedPacket("packet too large")
    if len(buf) < 4 or buf[:2] != MAGIC:
        raise MalformedPacket("bad magic")
    if buf[2] != WIRE_VERSION:
        raise MalformedPacket(f"unsupported wire version {buf[2]}")
    r = _Reader(buf, 3)
    try:
        msg = _decode_body(r.u8(), r, False)
    except MalformedPacket:
        raise
    except (struct.error, ValueError, IndexError, OverflowError) as e:  # defensive: never escape
        raise MalformedPacket(str(e)) from e
    if r.remaining:
        raise MalformedPacket("trailing bytes")
    return msg
