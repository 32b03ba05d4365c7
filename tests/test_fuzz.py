"""Every message type, with type-confused fields, to every inbox of a live node."""

from __future__ import annotations

import itertools
import pickle
import time

import pytest
import zmq

import meshcompute as mesh
from meshcompute.host.sessions import pid_alive
from meshcompute.owner import context
from meshcompute.wire.messages import FIELDS, Msg

from .conftest import wait_for

# Never sent: messages that name a pid or a process to stop. A hostile REGISTER or
# KILL_* is refused by validation, but a fuzz test must not risk signalling anything.
NEVER = {Msg.REGISTER, Msg.KILL_WORKER, Msg.KILL_ACTOR}

HOSTILE = [None, -1, 0, 2**70, float("nan"), float("inf"), -1e300, "", "x", b"", b"\x00" * 28,
           [], {}, (), ((("CPU", -100.0),)), [("CPU", float("nan"))], (("CPU", "many"),), {"a": 1},
           ("node", None, 3), [[None]], "nodeX/daemon@tcp://256.1.1.1:99999", -(2**63)]


def _messages():
    for kind, fields in FIELDS.items():
        if kind in NEVER:
            continue
        n = len(fields)
        for pos, bad in itertools.product(range(max(n, 1)), HOSTILE):
            values = [1] * n
            if n:
                values[pos] = bad
            yield pickle.dumps((int(kind), *values), 5)
        yield pickle.dumps((int(kind),), 5)  # fields missing
        yield pickle.dumps((int(kind), *([b"\x01" * 28] * (n + 2))), 5)  # too many


def _dropped(core) -> int:
    return sum(core.node_info()["dropped"].values())


def _taken(core) -> int:
    return sum(core.received.values()) + sum(core.io.drops.counts.values())


def _settled(core) -> bool:
    """The driver's I/O thread has taken every message sent so far: its counts stop moving."""
    before = _taken(core)
    time.sleep(0.3)
    return _taken(core) == before


@pytest.mark.timeout(120)
def test_every_message_type_with_confused_fields_leaves_the_node_serving(fresh_node):
    core = context.core
    ping = mesh.remote(lambda x: x)
    assert mesh.get(ping.remote(1)) == 1
    info = core.node_info()
    daemon_pid, cpus = info["pid"], mesh.cluster_resources()["CPU"]
    ctx = zmq.Context()
    try:
        for target in (core.daemon_addr, core.address):
            for n, identity in enumerate((f"{core.node_id}/p_fuzz@".encode(), b"not a mesh address", b"\xff\xfe")):
                dropped_before = _dropped(core)
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 5000)
                sock.setsockopt(zmq.SNDHWM, 0)
                sock.setsockopt(zmq.IDENTITY, identity)
                sock.connect(core.io._ep.resolve(target))
                for header in _messages():
                    sock.send_multipart([header])
                sent = sum(1 for _ in _messages())
                if target == core.daemon_addr and n > 0:
                    # A sender that is no address: every one of its messages is refused, and counted.
                    assert wait_for(lambda b=dropped_before, s=sent: _dropped(core) - b >= s, timeout=60)
                    assert _dropped(core) - dropped_before == sent
                elif target == core.daemon_addr:
                    # A last, valid write on the same pipe: once it shows, the daemon has
                    # handled every message before it (one pipe is FIFO).
                    sock.send_multipart([pickle.dumps((int(Msg.GCS_REQUEST), 1, ("kv_put", b"fuzz%d" % n,
                                                                                  b"done", True), 10.0), 5)])
                    assert wait_for(lambda n=n: mesh.kv.get(f"fuzz{n}") == b"done", timeout=60)
                else:
                    assert wait_for(lambda: _settled(core), timeout=30)  # it has taken them all
                sock.close()
        # The node serves on: its daemon is the same process, tasks run, nothing was inflated.
        assert mesh.get([ping.remote(i) for i in range(20)], timeout=30) == list(range(20))
        assert pid_alive(daemon_pid) and core.node_info()["pid"] == daemon_pid
        assert mesh.cluster_resources()["CPU"] == cpus
        assert mesh.available_resources().get("CPU", 0) <= cpus
    finally:
        ctx.destroy(linger=0)
