"""The bulk channel under hostile input, on a two-node mesh over loopback TCP.

A daemon's bulk socket (node/bulk.py) speaks ZeroMQ's NULL mechanism, so anyone
may connect and send frames: garbage, frames of no session, frames over the size
limit, and -- from a member that opened a session -- replayed and tampered ones.
Each is dropped and counted (NODE_INFO -> dropped), none costs the node memory,
and the node serves pulls afterwards.
"""

from __future__ import annotations

import time

import numpy as np
import psutil
import pytest
import zmq

import meshcompute as mesh
from meshcompute.host.launcher import query
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from meshcompute.wire.auth import MeshKeys
from meshcompute.wire.messages import Msg, decode, encode
from meshcompute.wire.sealing import (
    ANSWER,
    MAGIC,
    PREFIX,
    REQUEST,
    Seal,
    new_key,
    new_session_id,
    parse_prefix,
)
from meshcompute.wire.transport import Endpoint, recv

from .conftest import driver_on_loopback_mesh, wait_for
from .test_frame_limits import _declare_huge_frame, _steady_anon_rss

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20


@pytest.fixture(scope="module")
def mesh2():
    with driver_on_loopback_mesh(2, num_cpus=1, object_store_memory=128 * MiB) as (token, nodes):
        b = nodes[1][1]
        yield {"token": token, "b": b, "on_b": NodeAffinitySchedulingStrategy(node_id=b["node_id"], soft=False)}


@mesh.remote
def block(n: int):
    return np.arange(n, dtype=np.int64)


def _pull_from_b_works(mesh2) -> None:
    """An object made on B, read here: A's daemon pulls it over B's bulk socket."""
    n = 3 * MiB  # 24 MiB: three chunks
    assert np.array_equal(mesh.get(block.options(scheduling_strategy=mesh2["on_b"]).remote(n), timeout=60),
                          np.arange(n, dtype=np.int64))


def _dropped(info: dict) -> dict:
    return {k: v for k, v in query(info, "node")["dropped"].items() if k.startswith("bulk:")}


def _recv(sock: zmq.Socket, timeout_s: float = 10.0) -> list | None:
    if sock.poll(int(timeout_s * 1000)):
        return sock.recv_multipart()
    return None


def test_frames_from_a_stranger_are_dropped_and_cost_nothing(mesh2):
    b = mesh2["b"]
    _pull_from_b_works(mesh2)
    endpoint = query(b, "node")["bulk"]
    host, port = endpoint[len("tcp://"):].rsplit(":", 1)
    daemon = psutil.Process(b["pid"])
    before = _steady_anon_rss(daemon)
    ctx = zmq.Context()
    try:
        stranger = ctx.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(endpoint)
        stranger.send_multipart([b"garbage"])  # one frame: no prefix and box
        stranger.send_multipart([b"x" * PREFIX.size, b"y" * 40])  # no magic
        stranger.send_multipart([PREFIX.pack(MAGIC, new_session_id(), 0), b"z" * 64])  # no such session
        assert wait_for(lambda: _dropped(b).get("bulk: malformed frame", 0) >= 2
                        and _dropped(b).get("bulk: unknown session", 0) >= 1, timeout=10), _dropped(b)
        stranger.send_multipart([PREFIX.pack(MAGIC, new_session_id(), 0), b"z" * 8192])  # over 4 KiB
        time.sleep(0.5)
    finally:
        ctx.destroy(linger=0)
    # A frame declared at 1 GiB: the connection is dropped when its length is read.
    sent, hung_up = _declare_huge_frame(host, int(port), b"NULL", 1 << 30, 64 * MiB)
    assert hung_up and sent < 64 * MiB
    assert _steady_anon_rss(daemon) - before < 4 * MiB
    assert daemon.is_running()
    _pull_from_b_works(mesh2)


def test_a_members_replayed_and_tampered_frames_are_dropped_and_its_session_goes_on(mesh2, tmp_path):
    """A member opens a session as a daemon would (BULK_OPEN on the CURVE channel), then
    sends a request twice and a tampered one: both are dropped; a fresh one is answered."""
    b = mesh2["b"]
    ctx = zmq.Context()
    ep = Endpoint(ctx, "feedface00c0ffee", "daemon", str(tmp_path), host="127.0.0.1",
                  keys=MeshKeys.from_token(mesh2["token"]))
    try:
        sid, key = new_session_id(), new_key()
        ep.send(b["address"], [encode(Msg.BULK_OPEN, 7, sid, key)])
        assert ep.tcp_inbox.poll(10_000), "no answer to BULK_OPEN"
        reply = decode(recv(ep.tcp_inbox)[1])
        assert reply[:2] == (Msg.REPLY, 7) and reply[2].startswith("tcp://"), reply
        bulk = ctx.socket(zmq.DEALER)
        bulk.setsockopt(zmq.LINGER, 0)
        bulk.connect(reply[2])
        seal = Seal(key, sid)
        oid = b"\x01" * 28  # no such object: the answer is an error, sealed all the same

        def request(counter: int) -> list:
            return seal.seal(REQUEST, counter, [encode(Msg.PULL_CHUNK, oid, 0, 1024)])

        def answer() -> tuple | None:
            frames = _recv(bulk, 5.0)
            if frames is None:
                return None
            sid_back, counter = parse_prefix(frames[0])
            assert sid_back == sid
            return decode(seal.open(ANSWER, counter, frames[0], frames[1:])[0])

        first = request(0)
        bulk.send_multipart(first)
        got = answer()
        assert got is not None and got[0] == Msg.CHUNK_DATA and got[1] == oid and got[4], got
        bulk.send_multipart(first)  # replayed
        tampered = request(2)
        tampered[1] = bytes([tampered[1][0] ^ 1]) + tampered[1][1:]
        bulk.send_multipart(tampered)
        assert wait_for(lambda: _dropped(b).get("bulk: replayed frame", 0) >= 1
                        and _dropped(b).get("bulk: forged frame", 0) >= 1, timeout=10), _dropped(b)
        assert _recv(bulk, 0.5) is None, "a replayed or tampered request was answered"
        bulk.send_multipart(request(4))
        got = answer()
        assert got is not None and got[0] == Msg.CHUNK_DATA, got
    finally:
        ep.close()
        ctx.destroy(linger=0)
    _pull_from_b_works(mesh2)


def test_a_puller_drops_a_chunk_whose_header_box_is_too_large_before_opening_it():
    """The puller's loop opens each chunk's header itself: one over 4 KiB (a sealed header is
    a hundred bytes) is dropped before any decryption, whoever sealed it."""
    import logging

    from meshcompute.node.bulk import BulkChannel, Session
    from meshcompute.wire.transport import DropLog

    ctx = zmq.Context()
    drops = DropLog(logging.getLogger("test"))
    bulk = BulkChannel(ctx, "127.0.0.1", lambda *a: None, lambda job, done: done(job(), None), drops)
    try:
        holder = "holder-daemon"
        seal = Seal(new_key(), new_session_id())
        bulk.pulling[holder] = Session(seal, holder)
        got = []
        handlers = {Msg.CHUNK_DATA: lambda sender, msg, parts: got.append((sender, msg[1], len(parts)))}
        header = encode(Msg.CHUNK_DATA, b"oid", 0, False, None)
        huge = encode(Msg.CHUNK_DATA, b"oid" * 3000, 0, False, None)  # over 4 KiB
        bulk._chunk(holder, seal.seal(ANSWER, 0, [huge, b"data"]), handlers)
        assert got == [] and drops.counts == {"bulk: malformed frame": 1}
        bulk._chunk(holder, seal.seal(ANSWER, 2, [header, b"data"]), handlers)
        assert got == [(holder, b"oid", 1)] and drops.counts == {"bulk: malformed frame": 1}
    finally:
        bulk.close()
        ctx.term()
