"""The frame-size rule of wire/transport.py: TCP sockets refuse frames over
MAX_FRAME_BYTES (libzmq's ZMQ_MAXMSGSIZE), and larger frames of our own travel split.

Real sockets on 127.0.0.1 (random ports) for the Endpoint tests; no daemon.
"""

from __future__ import annotations

import os

import lz4.block
import numpy as np
import pytest
import zmq

from meshcompute.node.pulls import PULL_CHUNK_BYTES
from meshcompute.wire import serialization, transport
from meshcompute.wire.auth import MeshKeys, generate_token, secure_client
from meshcompute.wire.messages import Msg, decode, encode
from meshcompute.wire.transport import (
    CURVE_BOX_BYTES,
    MAX_FRAME_BYTES,
    SPLIT_MARK,
    Endpoint,
    MessageTooLarge,
    join,
    recv,
    split,
)

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


def _data(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------- the rule


def test_messages_with_small_frames_travel_as_they_are():
    frames = [encode(Msg.GET_OBJECT, b"x" * 20), b"y" * MAX_FRAME_BYTES, memoryview(b"z" * 10)]
    assert split(frames) is frames
    assert join(frames) is frames
    assert join([b"sender", *frames], 1)[1] is frames[0]


def test_a_large_frame_travels_in_parts_that_share_its_memory():
    header = encode(Msg.PUSH_TASKS, b"lease", (), [("task", _data(100))])
    big = np.frombuffer(_data(2 * MAX_FRAME_BYTES + 5, seed=1), dtype=np.uint8)
    small = b"tail"
    out = split([header, memoryview(big), small])
    assert bytes(out[0]) == SPLIT_MARK + bytes([1, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0])
    assert out[1] is header and out[-1] is small
    parts = out[2:5]
    assert [memoryview(p).nbytes for p in parts] == [MAX_FRAME_BYTES, MAX_FRAME_BYTES, 5]
    assert all(np.shares_memory(np.asarray(p), big) for p in parts), "a part was copied"
    back = join(out)
    assert back[0] is header and back[2] is small
    assert isinstance(back[1], bytearray) and back[1] == big.tobytes()
    assert decode(back[0])[0] == Msg.PUSH_TASKS


def test_a_split_message_can_carry_a_split_header_and_empty_frames():
    header = encode(Msg.PUSH_TASKS, b"lease", (), [("task", _data(MAX_FRAME_BYTES + 1))])
    out = split([header, b""])
    assert len(out) == 1 + 2 + 1
    back = join([b"sender", *out], 1)
    assert back[0] == b"sender" and back[1] == header and back[2] == b""
    assert decode(back[1])[3][0][1] == _data(MAX_FRAME_BYTES + 1)


@pytest.mark.parametrize("message", [
    [SPLIT_MARK],  # no count table
    [SPLIT_MARK + b"\x01\x00\x00", b"a"],  # a table of 3 bytes
    [SPLIT_MARK + b"\x02\x00\x00\x00", b"a"],  # 2 parts announced, 1 sent
    [SPLIT_MARK + b"\x01\x00\x00\x00", b"a", b"b"],  # 1 announced, 2 sent
    [SPLIT_MARK + b"\x00\x00\x00\x00\x01\x00\x00\x00", b"a"],  # a frame of no parts
])
def test_join_refuses_a_split_that_breaks_the_rule(message):
    with pytest.raises(ValueError):
        join(message)


def test_the_joined_total_is_bounded_on_both_sides(monkeypatch):
    monkeypatch.setattr(transport, "MAX_SPLIT_BYTES", MAX_FRAME_BYTES)
    with pytest.raises(MessageTooLarge, match="put"):
        split([b"h", b"x" * MAX_FRAME_BYTES, b"x" * (MAX_FRAME_BYTES + 1)])
    # A peer announcing a larger message is refused before anything is joined.
    parts = [b"x" * MiB] * 9
    with pytest.raises(ValueError, match="over"):
        join([SPLIT_MARK + b"\x09\x00\x00\x00", *parts])


def test_a_broken_split_is_handed_on_as_it_came_and_decodes_as_no_message():
    ctx = zmq.Context()
    try:
        inbox = ctx.socket(zmq.ROUTER)
        port = inbox.bind_to_random_port("tcp://127.0.0.1")
        peer = ctx.socket(zmq.DEALER)
        peer.connect(f"tcp://127.0.0.1:{port}")
        peer.send_multipart([SPLIT_MARK + b"\x05\x00\x00\x00", b"a"])
        assert inbox.poll(5000)
        frames = recv(inbox)
        assert len(frames) == 3 and bytes(frames[1]).startswith(SPLIT_MARK)
        with pytest.raises(Exception):  # noqa: B017 - whatever unpickling raises: receivers drop it
            decode(frames[1])
    finally:
        ctx.destroy(linger=0)


def test_a_pull_chunk_never_needs_splitting():
    """Chunks of pulls are the largest frames sent whole (zero-copy from the arena);
    even an incompressible one that lz4 made larger fits."""
    assert PULL_CHUNK_BYTES <= MAX_FRAME_BYTES
    packed = lz4.block.compress(os.urandom(PULL_CHUNK_BYTES))
    assert PULL_CHUNK_BYTES < len(packed) <= MAX_FRAME_BYTES


def test_a_function_that_captures_too_much_is_refused_with_advice(monkeypatch):
    monkeypatch.setattr(serialization, "MAX_FUNCTION_BYTES", MiB)
    blob = _data(2 * MiB)

    def uses_blob():
        return len(blob)

    with pytest.raises(ValueError, match=r"uses_blob.*put\(\)"):
        serialization.dumps_function(uses_blob)
    assert serialization.dumps_function(lambda: 1)


# --------------------------------------------------------------------------- sockets


@pytest.fixture
def two_endpoints(tmp_path):
    """Two endpoints on TCP with CURVE, each in its own context as in two processes."""
    keys = MeshKeys.from_token(generate_token())
    made = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        ctx = zmq.Context()
        made.append((ctx, Endpoint(ctx, f"node{name}", name, str(d), host="127.0.0.1", keys=keys)))
    yield keys, made[0][1], made[1][1]
    for ctx, ep in made:
        ep.close()
        ctx.term()


def _receive(sock: zmq.Socket, timeout_ms: int = 10000) -> list:
    assert sock.poll(timeout_ms), "nothing arrived"
    return recv(sock)


def test_split_frames_cross_a_curve_connection_and_come_back_joined(two_endpoints):
    keys, a, b = two_endpoints
    header = encode(Msg.GET_OBJECT, _data(20 * MiB, seed=2))  # a 20 MiB header
    exact = _data(MAX_FRAME_BYTES, seed=3)  # the largest frame that travels whole
    buffer = np.frombuffer(_data(MAX_FRAME_BYTES + 1, seed=4), dtype=np.uint8)
    a.send(b.address, [header, exact, memoryview(buffer)])
    sender, *message = _receive(b.tcp_inbox)
    assert sender.bytes == a.address.encode()
    assert [bytes(m) for m in message] == [header, exact, buffer.tobytes()]
    assert isinstance(message[1], zmq.Frame), "a frame within the limit was joined"
    assert decode(message[0])[1] == _data(20 * MiB, seed=2)
    for sock in (b.tcp_inbox, a.outbox(b.address)):
        assert sock.getsockopt(zmq.MAXMSGSIZE) == MAX_FRAME_BYTES + CURVE_BOX_BYTES


def test_a_member_that_sends_one_frame_over_the_limit_is_disconnected(two_endpoints):
    """Even with the mesh key: libzmq drops the connection at the frame's length."""
    keys, a, b = two_endpoints
    ctx = zmq.Context()
    try:
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.setsockopt(zmq.IDENTITY, b"nodez/raw@")
        secure_client(raw, keys)
        raw.connect(b.address.partition("@")[2])
        raw.send_multipart([b"before"])
        assert b.tcp_inbox.poll(5000) and recv(b.tcp_inbox)[1].bytes == b"before"
        raw.send_multipart([b"x" * (MAX_FRAME_BYTES + 1)])
        assert not b.tcp_inbox.poll(1000), "a frame over the limit got through"
        # Our own sends split it and get through.
        a.send(b.address, [b"x" * (MAX_FRAME_BYTES + 1)])
        assert bytes(_receive(b.tcp_inbox)[1]) == b"x" * (MAX_FRAME_BYTES + 1)
    finally:
        ctx.destroy(linger=0)
