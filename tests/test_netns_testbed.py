"""Hosts in network namespaces: CURVE across real links, cut and heal, teardown, TCP figure.

Needs root and working `ip netns`; skipped otherwise.  Beds here use the prefix
`mtest`, so a developer's own `mesh` bed is left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshcompute.testing.netns import (
    NetnsError,
    TestBed,
    existing,
    measure_tcp_throughput,
    netns_unavailable_reason,
    teardown,
)
from meshcompute.wire.auth import generate_token

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

PREFIX = "mtest"
REPO = str(Path(__file__).resolve().parents[1])
PORT = 7077

ECHO_SERVER = r"""
import logging, os, sys, zmq
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
from meshcompute.wire.auth import MeshAuthenticator, MeshKeys, secure_server
keys = MeshKeys.from_token(os.environ["MESH_TOKEN"])
ctx = zmq.Context()
auth = MeshAuthenticator(ctx, keys).start()
sock = ctx.socket(zmq.ROUTER)
sock.linger = 0
secure_server(sock, keys)
auth.watch(sock)
sock.bind(sys.argv[1])
print("ready", flush=True)
while True:
    ident, *frames = sock.recv_multipart()
    sock.send_multipart([ident, b"echo:", *frames])
"""

ECHO_CLIENT = r"""
import os, sys, zmq
from meshcompute.wire.auth import MeshKeys, secure_client
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.linger = 0
secure_client(s, MeshKeys.from_token(os.environ["MESH_TOKEN"]))
s.connect(sys.argv[1])
s.send(sys.argv[3].encode())
print(b"".join(s.recv_multipart()).decode() if s.poll(int(float(sys.argv[2]) * 1000)) else "TIMEOUT", flush=True)
s.close()
ctx.term()
"""


@pytest.fixture(autouse=True)
def netns_required():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)


def env_with(token: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO, "MESH_TOKEN": token}


def echo(bed: TestBed, host: int, server: int, token: str, text: str, wait: float = 3.0) -> str:
    out = bed.exec(host, [sys.executable, "-c", ECHO_CLIENT, f"tcp://{bed.address(server)}:{PORT}",
                          str(wait), text], env=env_with(token), timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def assert_gone(prefix: str, pids: list[int]) -> None:
    assert existing(prefix) == ([], [])
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert prefix not in listed and prefix not in links
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} survived the teardown"


def test_curve_echo_between_hosts_wrong_token_cut_and_heal():
    token = generate_token()
    bed = TestBed(3, prefix=PREFIX, replace=True).up()
    try:
        server = bed.spawn(1, [sys.executable, "-c", ECHO_SERVER, f"tcp://{bed.address(1)}:{PORT}"],
                           env=env_with(token), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        assert bed.pids(1) == [server.pid]

        assert echo(bed, 2, 1, token, "hello") == "echo:hello"
        assert echo(bed, 3, 1, generate_token(), "intruder", wait=1.5) == "TIMEOUT"

        bed.cut(1)
        assert echo(bed, 2, 1, token, "through the cut?", wait=1.5) == "TIMEOUT"
        bed.heal(1)
        assert echo(bed, 2, 1, token, "healed") == "echo:healed"
        pids = [p for i in bed.hosts for p in bed.pids(i)]
    finally:
        bed.down()
    assert_gone(PREFIX, pids)
    assert server.returncode is not None
    log = server.stderr.read()
    assert "meshcompute.auth: refused a connection" in log and "cryptographic" in log, log
    bed.down()  # twice is fine


def test_teardown_after_a_crash_works_from_names_alone():
    bed = TestBed(2, prefix=PREFIX, replace=True).up()
    sleeper = bed.spawn(2, ["sleep", "1000"])
    with pytest.raises(NetnsError, match="already exists"):
        TestBed(2, prefix=PREFIX).up()
    del bed  # the owner "crashed": nothing but the names is left
    removed = teardown(PREFIX)
    assert set(removed) == {f"{PREFIX}1", f"{PREFIX}2", f"{PREFIX}v1", f"{PREFIX}v2", f"{PREFIX}br0"}
    assert sleeper.wait(timeout=5) != 0
    assert_gone(PREFIX, [sleeper.pid])
    assert teardown(PREFIX) == []


def test_tcp_throughput_between_two_namespaces(capsys):
    nbytes = 512 << 20
    with TestBed(2, prefix=PREFIX, replace=True) as bed:
        mbs = measure_tcp_throughput(bed, 1, 2, nbytes)
    assert_gone(PREFIX, [])
    assert mbs > 10
    with capsys.disabled():
        print(f"\n[netns] TCP over veth+bridge, python sockets, 512 MiB host1 -> host2: {mbs:.0f} MB/s")
