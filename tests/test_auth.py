"""CURVE keyed from the mesh token: members talk, everyone else is refused and logged.

Real sockets on 127.0.0.1, random ports.  The server and the clients use separate
contexts, as separate processes would.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import stat
import time

import pytest
import zmq

from meshcompute.wire import auth
from meshcompute.wire.auth import (
    MeshAuthenticator,
    MeshKeys,
    generate_token,
    load_or_create_token,
    secure_client,
    secure_server,
    token_from_env_or_arg,
)

pytestmark = pytest.mark.timeout(30)

TOKEN = generate_token()
OTHER = generate_token()
SHORT = 300  # ms: long enough for a local handshake, short enough to keep tests fast


class Net:
    """Contexts and sockets of one test; everything is closed at teardown."""

    def __init__(self) -> None:
        self.contexts: list[zmq.Context] = []
        self.sockets: list[zmq.Socket] = []
        self.auths: list[MeshAuthenticator] = []

    def context(self) -> zmq.Context:
        ctx = zmq.Context()
        self.contexts.append(ctx)
        return ctx

    def socket(self, ctx: zmq.Context, kind: int) -> zmq.Socket:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self.sockets.append(sock)
        return sock

    def server(self, token: str = TOKEN, **auth_kwargs) -> tuple[zmq.Socket, str, MeshAuthenticator]:
        ctx = self.context()
        keys = MeshKeys.from_token(token)
        authn = MeshAuthenticator(ctx, keys, **auth_kwargs).start()
        self.auths.append(authn)
        sock = self.socket(ctx, zmq.ROUTER)
        secure_server(sock, keys)
        authn.watch(sock)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return sock, f"tcp://127.0.0.1:{port}", authn

    def client(self, address: str, token: str | None = TOKEN) -> zmq.Socket:
        sock = self.socket(self.context(), zmq.DEALER)
        if token is not None:
            secure_client(sock, MeshKeys.from_token(token))
        sock.connect(address)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        for authn in self.auths:
            authn.stop()
        for ctx in self.contexts:
            ctx.term()


@pytest.fixture
def net():
    n = Net()
    yield n
    n.close()


def echo_once(server: zmq.Socket, client: zmq.Socket, payload: bytes, timeout_ms: int = 5000) -> bytes:
    client.send(payload)
    assert server.poll(timeout_ms), "server got nothing"
    ident, msg = server.recv_multipart()
    server.send_multipart([ident, b"echo:" + msg])
    assert client.poll(timeout_ms), "client got no answer"
    return client.recv()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "meshcompute.auth"]


# --------------------------------------------------------------------------- sessions


def test_same_token_router_dealer_exchange(net):
    server, address, authn = net.server()
    client = net.client(address)
    for i in range(3):
        assert echo_once(server, client, b"hello %d" % i) == b"echo:hello %d" % i
    assert authn.wait_for("HANDSHAKE_SUCCEEDED")
    counts = authn.counts()
    assert counts.get("zap_allowed", 0) >= 1
    assert counts.get("zap_denied", 0) == 0


def test_wrong_token_gets_nothing_through_and_is_logged(net, caplog):
    caplog.set_level(logging.WARNING, logger="meshcompute.auth")
    server, address, authn = net.server()
    intruder = net.client(address, token=OTHER)
    intruder.send(b"run this")
    assert authn.wait_for("HANDSHAKE_FAILED_PROTOCOL")
    assert server.poll(SHORT) == 0
    assert intruder.poll(SHORT) == 0
    assert any("cryptographic" in m and address in m for m in refusals(caplog)), refusals(caplog)
    # A member still gets through while the intruder keeps retrying.
    assert echo_once(server, net.client(address), b"ok") == b"echo:ok"


def test_client_with_another_key_is_refused_by_zap_with_its_address(net, caplog):
    """Knowing the mesh public key is not enough: CURVE makes the client prove the secret."""
    caplog.set_level(logging.WARNING, logger="meshcompute.auth")
    server, address, authn = net.server()
    keys = MeshKeys.from_token(TOKEN)
    public, secret = zmq.curve_keypair()
    sock = net.socket(net.context(), zmq.DEALER)
    sock.curve_serverkey = keys.public
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.connect(address)
    sock.send(b"let me in")
    assert authn.wait_for("zap_denied")
    assert authn.wait_for("HANDSHAKE_FAILED_AUTH")
    assert server.poll(SHORT) == 0
    assert sock.poll(SHORT) == 0
    assert any("from 127.0.0.1" in m and "CURVE" in m for m in refusals(caplog)), refusals(caplog)


def test_plain_client_is_refused(net, caplog):
    caplog.set_level(logging.WARNING, logger="meshcompute.auth")
    server, address, authn = net.server()
    plain = net.client(address, token=None)
    plain.send(b"hello?")
    # The server sees the mechanism mismatch, or (when the client notices it first and
    # hangs up) a handshake that broke off; either way it is refused and logged.
    failed = ("HANDSHAKE_FAILED_PROTOCOL", "HANDSHAKE_FAILED_NO_DETAIL")
    assert wait_until(lambda: any(authn.counts().get(k) for k in failed))
    assert server.poll(SHORT) == 0
    assert plain.poll(SHORT) == 0
    logged = refusals(caplog)
    assert any("mechanism mismatch" in m or "broke off" in m for m in logged), logged
    assert authn.counts().get("zap_allowed", 0) == 0


def test_garbage_bytes_on_the_curve_port_leave_the_server_serving(net):
    server, address, authn = net.server()
    port = int(address.rsplit(":", 1)[1])
    rng = random.Random(7)
    greeting_curve = b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00CURVE" + b"\x00" * 15 + b"\x00" * 32
    payloads = [
        rng.randbytes(4096),
        b"\xff" + b"\x00" * 8 + b"\x7f",  # a truncated greeting
        greeting_curve + rng.randbytes(200),  # a CURVE greeting, then noise
        greeting_curve + b"\x06\xff" + b"\xff" * 8 + rng.randbytes(64),  # huge frame length
        greeting_curve + b"\x04\x40\x05HELLO" + rng.randbytes(58),  # a HELLO that fails to open
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"",
    ]
    stalled = socket.create_connection(("127.0.0.1", port), timeout=5)  # opens, never speaks
    try:
        for data in payloads * 3:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if data:
                    try:
                        s.sendall(data)
                    except OSError:
                        pass  # the server may have hung up already: fine
        client = net.client(address)
        for i in range(5):
            assert echo_once(server, client, b"still here %d" % i) == b"echo:still here %d" % i
    finally:
        stalled.close()
    assert server.poll(SHORT) == 0  # no garbage ever surfaced as a message
    counts = authn.counts()
    print("server-side handshake events:", counts)
    assert counts.get("HANDSHAKE_FAILED_PROTOCOL", 0) + counts.get("HANDSHAKE_FAILED_NO_DETAIL", 0) >= 1


def test_refusal_logging_is_rate_limited(net, caplog):
    caplog.set_level(logging.WARNING, logger="meshcompute.auth")
    server, address, authn = net.server(log_limit=3, log_window=3600)
    for _ in range(8):
        net.client(address, token=OTHER).send(b"x")
    assert authn.wait_for("HANDSHAKE_FAILED_PROTOCOL", count=20)  # they keep reconnecting
    assert server.poll(0) == 0
    assert len(refusals(caplog)) == 3
    for sock in net.sockets[1:]:
        sock.close(linger=0)
    authn.stop()
    assert "further connection refusals were not logged" in refusals(caplog)[-1]


def test_throttle_reports_what_it_held_back():
    now = [0.0]
    t = auth._Throttle(limit=2, window=10.0, clock=lambda: now[0])
    assert [t.allow() for _ in range(5)] == [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0)]
    now[0] = 10.5
    assert t.allow() == (True, 3)
    assert t.allow() == (True, 0)
    assert t.allow() == (False, 0)


def test_stopped_authenticator_fails_closed(net):
    server, address, authn = net.server()
    authn.stop()
    client = net.client(address)
    client.send(b"x")
    assert server.poll(SHORT * 2) == 0
    assert client.poll(0) == 0


def test_secure_server_needs_a_running_authenticator(net):
    ctx = net.context()
    sock = net.socket(ctx, zmq.ROUTER)
    keys = MeshKeys.from_token(TOKEN)
    with pytest.raises(RuntimeError, match="MeshAuthenticator"):
        secure_server(sock, keys)
    with MeshAuthenticator(ctx, keys):
        with pytest.raises(RuntimeError, match="same keys"):
            secure_server(sock, MeshKeys.from_token(OTHER))
        with pytest.raises(RuntimeError, match="already has"):
            MeshAuthenticator(ctx, keys).start()
        secure_server(sock, keys)
    with pytest.raises(RuntimeError):
        secure_server(sock, keys)


def test_plain_ipc_sockets_in_the_same_context_are_unaffected(net, tmp_path):
    """The daemon's local ipc sockets (NULL mechanism, no ZAP domain) keep working."""
    server, address, authn = net.server()
    ctx = net.contexts[0]
    local = net.socket(ctx, zmq.ROUTER)
    local.bind(f"ipc://{tmp_path}/inbox")
    peer = net.socket(ctx, zmq.DEALER)
    peer.connect(f"ipc://{tmp_path}/inbox")
    assert echo_once(local, peer, b"local") == b"echo:local"
    assert authn.counts().get("zap_denied", 0) == 0


# --------------------------------------------------------------------------- keys


def test_key_derivation_is_deterministic_and_token_specific():
    a = MeshKeys.from_token(TOKEN)
    auth._derive.cache_clear()
    b = MeshKeys.from_token(TOKEN)
    assert a == b and a is not b
    assert MeshKeys.from_token(" " + TOKEN + "\n") == a
    c = MeshKeys.from_token(OTHER)
    assert c.public != a.public and c.secret != a.secret
    assert len(a.public) == len(a.secret) == 40
    assert zmq.curve_public(a.secret) == a.public
    assert a.secret not in repr(a).encode() and a.fingerprint in repr(a)
    # Pinned: every member of a mesh must derive the same pair, across versions.
    pinned = MeshKeys.from_token("correct horse battery staple")
    assert pinned.public == b"GRUl]DRwMYsG?m&V<aqGk(vd>EOaEYrQaCj*DPHI"
    assert pinned.fingerprint == "199d7898b542"


def test_short_or_non_string_tokens_are_rejected():
    with pytest.raises(ValueError, match="at least"):
        MeshKeys.from_token("hunter2")
    with pytest.raises(TypeError):
        MeshKeys.from_token(b"x" * 32)  # type: ignore[arg-type]
    assert len(generate_token()) == 43 and generate_token() != generate_token()


# --------------------------------------------------------------------------- token sources


def test_token_file_is_created_0600_and_reused(tmp_path):
    session = tmp_path / "session"
    token = load_or_create_token(session)
    path = session / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(session.stat().st_mode) == 0o700
    assert load_or_create_token(session) == token
    assert sorted(os.listdir(session)) == ["token"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660], ids=lambda m: f"{m:04o}")
def test_token_file_readable_by_others_is_refused(tmp_path, mode):
    token = load_or_create_token(tmp_path)
    path = tmp_path / "token"
    path.chmod(mode)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_token(tmp_path)
    path.chmod(0o600)
    assert load_or_create_token(tmp_path) == token


def test_token_file_symlink_or_junk_is_refused(tmp_path):
    real = tmp_path / "elsewhere"
    real.write_text(generate_token())
    real.chmod(0o600)
    session = tmp_path / "s"
    session.mkdir()
    (session / "token").symlink_to(real)
    with pytest.raises(PermissionError, match="symlink"):
        load_or_create_token(session)
    other = tmp_path / "t"
    other.mkdir()
    (other / "token").write_text("short\n")
    (other / "token").chmod(0o600)
    with pytest.raises(ValueError, match="at least"):
        load_or_create_token(other)


def test_token_from_arg_then_env(monkeypatch):
    monkeypatch.delenv("MESH_TOKEN", raising=False)
    assert token_from_env_or_arg(None) is None
    monkeypatch.setenv("MESH_TOKEN", " from-env \n")
    assert token_from_env_or_arg(None) == "from-env"
    assert token_from_env_or_arg("from-arg") == "from-arg"
    assert token_from_env_or_arg("  ") == "from-env"
    monkeypatch.setenv("MESH_TOKEN", "")
    assert token_from_env_or_arg("") is None
