"""Requests to a node's daemon from a process that is no part of the mesh (``mesh job``,
``JobSubmissionClient``), on this machine or any other.

A node of this machine is reached over its session dir's socket, as other commands do.
A node elsewhere is reached over TCP with the mesh's CURVE keys, derived from the
token (``MESH_TOKEN``): the client serves a TCP inbox of its own, secured with the same
keys, on its address toward the node, because daemons answer each sender at the
address it names (wire/transport.py).  So the node must reach the client back, as
it must reach a joining node.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from typing import Any

from ..exceptions import MeshError
from .launcher import find_any_node, find_node


class NodeUnreachable(ConnectionError):
    """No node answers at the address, or the token is not the mesh's (the message says which)."""


def _address_default(address: str | None) -> str | None:
    address = address if address is not None else os.environ.get("MESH_ADDRESS")
    return None if address in (None, "", "auto", "local") else address


class NodeConnection:
    """One daemon, asked one request at a time (thread-safe); ``close()`` when done."""

    def __init__(self, address: str | None = None, token: str | None = None, check_timeout: float = 3.0) -> None:
        import zmq

        from ..wire.ids import random_id
        from ..wire.transport import Endpoint, make_address

        address = _address_default(address)
        info = find_any_node(address) if address else find_node(None)
        self._lock = threading.Lock()
        self._req_id = 0
        self._tmp: str | None = None
        self.ctx = zmq.Context()
        if info is not None:
            self.where = (info.get("tcp") or "").replace("tcp://", "") or info["session_dir"]
            self.ep = Endpoint(self.ctx, info["node_id"], f"cli_{random_id()}", info["session_dir"])
            self.daemon = info["address"]
            return
        try:
            ip, port, keys = check_remote(address, token, check_timeout)
            from .netcheck import local_ip_towards

            self._tmp = tempfile.mkdtemp(prefix="mesh-client-")
            # Its inbox's socket file: removed by close(), else when the client is collected or at exit.
            weakref.finalize(self, shutil.rmtree, self._tmp, True)
            self.ep = Endpoint(self.ctx, f"client{random_id(4)}", "cli", self._tmp,
                               host=local_ip_towards(ip) or "0.0.0.0", port=0, keys=keys)
        except BaseException:
            self.close()
            raise
        self.where = f"{ip}:{port}"
        self.daemon = make_address("peer", "daemon", f"tcp://{ip}:{port}")

    def request(self, msg_type: Any, *fields: Any, frames: list = (), timeout: float = 10.0) -> Any:
        """Send one request (a fresh req_id goes first) and return the REPLY's value."""
        from ..wire.messages import Msg, decode, encode
        from ..wire.transport import recv

        with self._lock:
            self._req_id += 1
            req_id = self._req_id
            self.ep.send(self.daemon, [encode(msg_type, req_id, *fields), *frames])
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                ready = [s for s in self.ep.inboxes if s.poll(int(min(left, 0.05) * 1000) + 1)]
                for inbox in ready:
                    msg = decode(recv(inbox, copy=True)[1])
                    if msg[0] == Msg.REPLY and msg[1] == req_id:
                        return msg[2]
        raise MeshError(f"the node at {self.where} did not answer in {timeout:g} s"
                        + (" (can it reach this machine back? see docs/security.md)" if self._tmp else ""))

    def gcs(self, op: tuple, timeout: float = 10.0) -> Any:
        """A control store read or write through this node; raises when it fails."""
        from ..exceptions import ControlStoreUnavailableError
        from ..wire.messages import Msg

        status, value = self.request(Msg.GCS_REQUEST, op, timeout, timeout=timeout + 2)
        if status != "ok":
            raise ControlStoreUnavailableError(f"the mesh's control store did not answer: {value}")
        return value

    def close(self) -> None:
        ep = getattr(self, "ep", None)
        if ep is not None:
            ep.close()
            self.ep = None
        self.ctx.term()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> NodeConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_remote(address: str | None, token: str | None, timeout: float = 3.0) -> tuple[str, int, Any]:
    """(ip, port, keys) of a node on another machine, checked: it answers and takes the token."""
    from ..wire.auth import MeshKeys
    from .netcheck import handshake_problem, parse_peer, resolve, tcp_problem

    if not address:
        raise NodeUnreachable("No meshcompute node runs on this machine: give the HOST:PORT of a node of the mesh "
                              "(--address or MESH_ADDRESS), with the mesh's token in MESH_TOKEN.")
    try:
        host, port = parse_peer(address)
        ip = resolve(host)
    except ValueError as e:
        raise NodeUnreachable(f"{address!r} is neither a node of this machine nor HOST:PORT: {e}") from None
    token = (token or os.environ.get("MESH_TOKEN") or "").strip()
    if not token:
        raise NodeUnreachable(f"{address} is not a node of this machine: reaching it needs the mesh's token in "
                              "MESH_TOKEN (`mesh start` printed it; it is in the token file of a node's session dir).")
    try:
        keys = MeshKeys.from_token(token)
    except (TypeError, ValueError) as e:
        raise NodeUnreachable(f"MESH_TOKEN is not a mesh token: {e}") from None
    problem = tcp_problem(ip, port, timeout) or handshake_problem(ip, port, token, timeout)
    if problem:
        raise NodeUnreachable(f"Cannot reach the mesh at {address}: {problem}")
    return ip, port, keys
