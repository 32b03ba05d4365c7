"""Sealed bulk frames (wire/sealing.py): what opens, what does not, what comes twice."""

from __future__ import annotations

import gc

import pytest
import zmq

from meshcompute.wire.sealing import (
    ANSWER,
    PREFIX,
    REQUEST,
    BoxBuffers,
    InvalidTag,
    ReplayWindow,
    Seal,
    new_key,
    new_session_id,
    parse_prefix,
)
from meshcompute.wire.sealing import WINDOW as W

from .conftest import wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def seal():
    return Seal(new_key(), new_session_id())


def test_a_sealed_message_opens_with_its_key_direction_and_counter(seal):
    prefix, *boxes = seal.seal(ANSWER, 6, [b"header", b"x" * 100_000])
    assert parse_prefix(prefix) == (seal.session_id, 6)
    assert seal.open(ANSWER, 6, prefix, boxes) == [b"header", b"x" * 100_000]
    assert all(len(b) > 16 and b"header" not in b for b in boxes)  # encrypted, with a tag


def test_a_flipped_bit_a_moved_box_another_key_or_direction_do_not_open(seal):
    prefix, head, data = seal.seal(ANSWER, 0, [b"header", b"data" * 1000])
    tampered = bytearray(data)
    tampered[100] ^= 1
    with pytest.raises(InvalidTag):
        seal.open(ANSWER, 0, prefix, [head, bytes(tampered)])
    with pytest.raises(InvalidTag):
        seal.open(ANSWER, 0, prefix, [data, head])  # boxes swapped
    with pytest.raises(InvalidTag):
        seal.open(REQUEST, 0, prefix, [head, data])  # the other direction's nonces
    other_prefix = seal.seal(ANSWER, 2, [b"header"])[0]
    with pytest.raises(InvalidTag):
        seal.open(ANSWER, 2, other_prefix, [head])  # a box moved into another message
    with pytest.raises(InvalidTag):
        Seal(new_key(), seal.session_id).open(ANSWER, 0, prefix, [head, data])
    with pytest.raises(InvalidTag):
        seal.open(ANSWER, 0, prefix, [])


def test_a_chunk_opens_later_straight_into_its_destination_and_only_if_genuine(seal):
    prefix, head, data = seal.seal(ANSWER, 4, [b"header", b"chunk" * 1000])
    first, part = seal.open_first(ANSWER, 4, prefix, [head, data])
    assert first == b"header" and part.nbytes == 5000
    dest = bytearray(part.nbytes)
    part.open_into(memoryview(dest))
    assert bytes(dest) == b"chunk" * 1000 and part.open() == b"chunk" * 1000
    tampered = bytearray(data)
    tampered[10] ^= 1
    _, forged = seal.open_first(ANSWER, 4, prefix, [head, bytes(tampered)])  # the header is genuine
    with pytest.raises(InvalidTag):
        forged.open_into(memoryview(bytearray(forged.nbytes)))
    with pytest.raises(InvalidTag):
        seal.open_first(ANSWER, 4, prefix, [data, head])  # a header that is not one


def test_large_boxes_are_sealed_into_buffers_that_come_back_once_zeromq_sent_them(seal):
    buffers = BoxBuffers(size=(4 << 20) + 16, keep=2)
    chunk = bytes(range(256)) * (3 << 12)  # 3 MiB: worth a buffer (half one or more)
    ctx = zmq.Context()
    out, inp = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        out.connect("inproc://boxes")  # nobody bound yet: what is sent waits in ZeroMQ
        first = seal.seal(ANSWER, 0, [b"header", chunk], buffers)
        box = first[2]
        assert isinstance(box, memoryview) and box.nbytes == len(chunk) + 16
        out.send_multipart(first, copy=False)
        del first
        gc.collect()
        assert buffers.free == 0, "a buffer came back while ZeroMQ still held it"
        second = seal.seal(ANSWER, 2, [b"header", chunk[::-1]], buffers)
        assert second[2].obj is not box.obj  # another buffer: the first is still on its way
        out.send_multipart(second, copy=False)
        del second, box
        inp.bind("inproc://boxes")
        for counter, want in ((0, chunk), (2, chunk[::-1])):  # both arrive intact
            prefix, head, sealed = inp.recv_multipart()
            assert seal.open(ANSWER, counter, prefix, [head, sealed]) == [b"header", want]
        gc.collect()
        assert wait_for(lambda: buffers.free == 2, timeout=5), "the buffers did not come back"
        # Boxes under half a buffer, or over one, are sealed the plain way.
        assert isinstance(seal.seal(ANSWER, 4, [b"h", chunk[:1 << 20]], buffers)[2], bytes)
        assert isinstance(seal.seal(ANSWER, 6, [b"h", chunk * 2], buffers)[2], bytes)
        third = seal.seal(ANSWER, 8, [b"h", chunk], buffers)  # taken from the kept two
        assert buffers.free == 1
        del third
        gc.collect()
        assert buffers.free == 2
        buffers.drop_idle()  # something was taken since the last call: kept
        assert buffers.free == 2
        buffers.drop_idle()  # nothing taken since: freed
        assert buffers.free == 0
    finally:
        out.close(0)
        inp.close(0)
        ctx.term()


def test_prefixes_that_are_not_ours_are_refused_before_decrypting():
    sid = new_session_id()
    assert parse_prefix(PREFIX.pack(b"MCB1", sid, 4)) == (sid, 4)
    assert parse_prefix(PREFIX.pack(b"MCB2", sid, 4)) is None  # another magic
    assert parse_prefix(PREFIX.pack(b"MCB1", sid, 3)) is None  # not a message's first counter
    assert parse_prefix(b"x" * 27) is None
    assert parse_prefix(b"x" * (8 << 20)) is None
    with pytest.raises(ValueError):
        Seal(b"short", sid)


def test_each_counter_is_accepted_once_in_any_order_within_the_window():
    w = ReplayWindow()
    assert w.accept(0) and not w.accept(0)
    assert w.accept(6) and w.accept(2)  # out of order (sealed on two threads)
    assert not w.accept(2) and not w.accept(6)
    assert w.accept(4)
    far = 2 * (W + 10)
    assert w.accept(far)
    assert not w.fresh(8), "older than the window: refused even if never seen"
    assert w.fresh(far - 2) and not w.fresh(far)
