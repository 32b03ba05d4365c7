from __future__ import annotations

import random
import struct

import pytest

from meshcompute.gossip import (
    Ack,
    Alive,
    Compound,
    Dead,
    Leave,
    MalformedPacket,
    MemberState,
    Meta,
    MsgType,
    Nack,
    Ping,
    PingReq,
    PushPull,
    PushPullEntry,
    Suspect,
    decode,
    encode,
)
from meshcompute.gossip.messages import COMPOUND_OVERHEAD, packet_size, part_size

ENTRIES = (
    PushPullEntry("n1", "10.0.0.1:7946", 3, MemberState.ALIVE, 7, b'{"cpu": 8}'),
    PushPullEntry("n2", "10.0.0.2:7946", 0, MemberState.SUSPECT, 0, b""),
    PushPullEntry("n3", "[::1]:7946", 9, MemberState.DEAD, 2, b"\x00\xff"),
    PushPullEntry("nœud-4", "host:1", 1, MemberState.LEFT, 1, b"x" * 300),
)

SIMPLE = [
    Ping(1, "n2", "n1", "10.0.0.1:7946"),
    Ping(0xFFFFFFFF, "", "n1", "a:1"),
    PingReq(42, "n3", "10.0.0.3:7946", "n1", "10.0.0.1:7946", True),
    PingReq(43, "n3", "10.0.0.3:7946", "n1", "10.0.0.1:7946", False),
    Ack(42, "n3"),
    Nack(42, "n2"),
    Alive("n1", "10.0.0.1:7946", 0),
    Alive("ünïcødé-☃", "h:2", 0xFFFFFFFF),
    Suspect("n2", 5, "n1"),
    Dead("n2", 5, "n3"),
    Leave("n4", 8),
    Meta("n1", 1, b""),
    Meta("n1", 2**64 - 1, bytes(range(256)) * 4),
    PushPull("n1", "10.0.0.1:7946", True, False, ()),
    PushPull("n1", "10.0.0.1:7946", False, True, ENTRIES),
]
SAMPLES = [*SIMPLE, Compound(tuple(m for m in SIMPLE if type(m) is not PushPull)), Compound(())]


def test_msg_type_values_are_frozen() -> None:
    # ONLY APPEND: existing values are wire format; this table may only grow.
    assert {t.name: t.value for t in MsgType} == {
        "PING": 1,
        "PING_REQ": 2,
        "ACK": 3,
        "NACK": 4,
        "ALIVE": 5,
        "SUSPECT": 6,
        "DEAD": 7,
        "LEAVE": 8,
        "META": 9,
        "PUSH_PULL": 10,
        "COMPOUND": 11,
    }
    assert {s.name: s.value for s in MemberState} == {"ALIVE": 0, "SUSPECT": 1, "DEAD": 2, "LEFT": 3}


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_roundtrip(msg) -> None:
    data = encode(msg)
    assert data[:3] == b"MG\x01"
    assert data[3] == msg.TYPE
    assert decode(data) == msg
    assert decode(bytearray(data)) == msg
    assert decode(memoryview(data)) == msg
    assert packet_size(msg) == len(data)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_describe_is_one_line(msg) -> None:
    d = msg.describe()
    assert isinstance(d, str) and d and "\n" not in d


def test_part_sizes_add_up() -> None:
    parts = tuple(m for m in SIMPLE if type(m) is not PushPull)
    assert len(encode(Compound(parts))) == COMPOUND_OVERHEAD + sum(part_size(p) for p in parts)


def test_encode_rejects_out_of_range_fields() -> None:
    bad = [
        Ping(-1, "a", "b", "c:1"),
        Ping(2**32, "a", "b", "c:1"),
        Alive("", "a:1", 0),
        Alive("x" * 256, "a:1", 0),
        Meta("n", 2**64, b""),
        Meta("n", 1, b"x" * 65536),
        Compound((Compound(()),)),
    ]
    for msg in bad:
        with pytest.raises(ValueError):
            encode(msg)
    with pytest.raises(TypeError):
        encode("not a message")  # type: ignore[arg-type]


def test_truncations_are_rejected() -> None:
    for msg in SAMPLES:
        data = encode(msg)
        for cut in range(len(data)):
            with pytest.raises(MalformedPacket):
                decode(data[:cut])


def test_trailing_bytes_are_rejected() -> None:
    for msg in SAMPLES:
        with pytest.raises(MalformedPacket):
            decode(encode(msg) + b"\x00")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"MG",
        b"XX\x01\x01",
        b"MG\x02\x01" + encode(Ack(1, "a"))[4:],  # unknown wire version
        b"MG\x01\x00",  # type 0
        b"MG\x01\xff",  # unknown type
        b"MG\x01"
        + bytes([MsgType.PING_REQ])
        + encode(PingReq(1, "t", "t:1", "s", "s:1", True))[4:-1]
        + b"\x02",
        b"MG\x01" + bytes([MsgType.ACK]) + struct.pack(">I", 1) + b"\x00",  # empty node id
        b"MG\x01" + bytes([MsgType.ACK]) + struct.pack(">I", 1) + b"\x02\xff\xfe",  # invalid utf-8
        # push-pull claiming 4 billion entries in a tiny packet
        b"MG\x01" + bytes([MsgType.PUSH_PULL]) + b"\x01a\x03a:1\x00" + struct.pack(">I", 0xFFFFFFFF),
        # push-pull with unknown flag bits
        b"MG\x01" + bytes([MsgType.PUSH_PULL]) + b"\x01a\x03a:1\x04" + struct.pack(">I", 0),
        # push-pull entry with an unknown member state
        b"MG\x01"
        + bytes([MsgType.PUSH_PULL])
        + b"\x01a\x03a:1\x00"
        + struct.pack(">I", 1)
        + b"\x01b\x03b:1"
        + struct.pack(">I", 0)
        + b"\x09"
        + struct.pack(">QH", 0, 0),
        # compound claiming 65535 parts
        b"MG\x01" + bytes([MsgType.COMPOUND]) + b"\xff\xff",
        # compound part with zero length
        b"MG\x01" + bytes([MsgType.COMPOUND]) + b"\x00\x01" + struct.pack(">I", 0),
        # compound part longer than the packet
        b"MG\x01" + bytes([MsgType.COMPOUND]) + b"\x00\x01" + struct.pack(">I", 1000) + b"\x03",
        # nested compound
        b"MG\x01"
        + bytes([MsgType.COMPOUND])
        + b"\x00\x01"
        + struct.pack(">I", 3)
        + bytes([MsgType.COMPOUND])
        + b"\x00\x00",
    ],
)
def test_hostile_inputs_are_rejected(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode(data)


@pytest.mark.parametrize("obj", [None, "MG\x01\x03", 12, [1, 2]])
def test_non_bytes_rejected(obj) -> None:
    with pytest.raises(MalformedPacket):
        decode(obj)  # type: ignore[arg-type]


def test_unknown_part_in_compound_is_skipped() -> None:
    ack = encode(Ack(7, "n"))[3:]  # TYPE + BODY
    future = bytes([200]) + b"whatever a newer peer sends"
    data = b"MG\x01" + bytes([MsgType.COMPOUND]) + b"\x00\x02"
    data += struct.pack(">I", len(future)) + future + struct.pack(">I", len(ack)) + ack
    assert decode(data) == Compound((Ack(7, "n"),))


def _check(data: bytes) -> None:
    try:
        msg = decode(data)
    except MalformedPacket:
        return
    # anything accepted must be a real message that survives a re-encode
    assert decode(encode(msg)) == msg


def test_fuzz_random_bytes() -> None:
    rng = random.Random(1234)
    for _ in range(20_000):
        n = rng.randrange(0, 96)
        _check(bytes(rng.getrandbits(8) for _ in range(n)))


def test_fuzz_random_bodies_behind_valid_header() -> None:
    rng = random.Random(99)
    for _ in range(20_000):
        t = rng.randrange(0, 14)
        n = rng.randrange(0, 80)
        _check(b"MG\x01" + bytes([t]) + bytes(rng.getrandbits(8) for _ in range(n)))


def test_fuzz_mutations_of_valid_packets() -> None:
    rng = random.Random(7)
    encoded = [encode(m) for m in SAMPLES]
    for _ in range(20_000):
        data = bytearray(rng.choice(encoded))
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            elif op == 1 and data:
                del data[rng.randrange(len(data)) :]
            else:
                pos = rng.randrange(len(data) + 1)
                data[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 6)))
        _check(bytes(data))
