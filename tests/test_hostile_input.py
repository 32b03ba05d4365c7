"""Hostile bytes on a node's sockets are dropped and logged; the node keeps serving."""

from __future__ import annotations

import os
import pickle
import random

import pytest
import zmq

import meshcompute as mesh
from meshcompute.owner import context
from meshcompute.wire.messages import Msg, describe, encode

pytestmark = pytest.mark.usefixtures("node")


@mesh.remote
def ping(x):
    return x


def _garbage(rng: random.Random) -> list[list[bytes]]:
    valid = encode(Msg.REQUEST_LEASE, 1, (("CPU", 1.0),), None)
    return [
        [b""],
        [rng.randbytes(64)],
        [valid[: len(valid) // 2]],  # a truncated pickle
        [pickle.dumps("not a tuple")],
        [pickle.dumps((9999, 1, 2))],  # unknown message type
        [pickle.dumps((int(Msg.REQUEST_LEASE),))],  # missing fields
        [pickle.dumps((int(Msg.STORE_PIN), 5, b"\x00" * 3))],
        [pickle.dumps((int(Msg.TASKS_DONE), [("bad",)]))],
        [pickle.dumps((int(Msg.RETURN_LEASE), b"no-such-lease"))],
        [encode(Msg.KILL_ACTOR, b"nope", True), rng.randbytes(10)],
        [rng.randbytes(2000), rng.randbytes(10), rng.randbytes(3)],
    ]


def test_garbage_to_the_daemon_and_to_a_driver_is_survived():
    core = context.core
    rng = random.Random(1234)
    ctx = zmq.Context()
    try:
        for target in (core.daemon_addr, core.address):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IDENTITY, b"\xff\xfe not utf8 " + os.urandom(4))
            sock.connect(core.io._ep.resolve(target))
            for frames in _garbage(rng) * 3:
                sock.send_multipart(frames)
            sock2 = ctx.socket(zmq.DEALER)
            sock2.setsockopt(zmq.LINGER, 0)
            sock2.connect(core.io._ep.resolve(target))
            for _ in range(50):
                sock2.send_multipart([rng.randbytes(rng.randrange(0, 300))])
            sock.close()
            sock2.close()
        # Both still work: tasks run, the daemon answers.
        assert mesh.get([ping.remote(i) for i in range(20)], timeout=20) == list(range(20))
        assert mesh.cluster_resources()["CPU"] == 2
    finally:
        ctx.destroy(linger=0)


def test_every_message_type_has_a_one_line_description():
    for kind in Msg:
        text = describe((int(kind),) + (b"\x01" * 20,) * 8)
        assert text.startswith(kind.name) and "\n" not in text
    assert describe((424242,)).startswith("UNKNOWN")


def test_a_register_whose_pid_the_kernel_does_not_vouch_for_is_refused():
    """A REGISTER names the pid the daemon will later signal: a worker must be a child of
    the zygote, a driver a live process of this user. Only pids of processes this test
    started are claimed (a regression must not make the daemon signal anything else)."""
    import subprocess
    import sys
    import time as _time

    from .conftest import wait_for

    core = context.core
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ctx = zmq.Context()
    try:
        def refused() -> int:
            return core.node_info()["dropped"].get("a REGISTER claiming", 0)

        before = refused()
        claims = [("worker", decoy.pid),  # ours, but no child of the zygote
                  ("driver", gone.pid),  # not alive
                  ("driver", "12"), ("worker", None), ("monitor", decoy.pid)]
        for n, (kind, pid) in enumerate(claims):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.setsockopt(zmq.IDENTITY, f"{core.node_id}/p_claim{n}@".encode())
            sock.connect(core.io._ep.resolve(core.daemon_addr))
            sock.send_multipart([encode(Msg.REGISTER, kind, pid, f"w{n}", "ns")])
            sock.close()
        assert wait_for(lambda: refused() - before == len(claims), timeout=10)
        _time.sleep(0.5)
        assert decoy.poll() is None, "the daemon signalled a process that never was its worker"
        assert mesh.get([ping.remote(i) for i in range(4)], timeout=20) == list(range(4))
    finally:
        ctx.destroy(linger=0)
        decoy.kill()
        decoy.wait()
