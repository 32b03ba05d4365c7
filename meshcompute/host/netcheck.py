"""Network checks run before a node starts or joins: so that a mistake fails at once, saying what it was.

A daemon that joins through a wrong address or with a wrong token would otherwise
start, serve, and wait forever for a mesh that never answers; these checks find the
cause from outside the daemon: the peer's address does not parse or resolve,
nothing listens there, the peer refuses this node's key (a wrong token), or a port
to serve on is already taken (and by whom).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time

import psutil

from ..exceptions import MeshError

PROBE_TIMEOUT_S = 3.0
"""How long (s) a check waits for a TCP connection or a CURVE handshake with a peer."""


class PortInUse(MeshError):
    """The TCP port a node was asked to serve on is taken."""


def parse_peer(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (optionally ``tcp://HOST:PORT``) -> (host, port); ValueError saying what is wrong."""
    raw = text.strip()
    if raw.startswith("tcp://"):
        raw = raw[len("tcp://"):]
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host or not port_text:
        raise ValueError(f"{text!r} is not HOST:PORT; a member's address looks like 10.0.0.5:7777 "
                         "(`mesh start` printed it, `mesh status` on that machine shows it)")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: the port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: the port must be between 1 and 65535")
    return host, port


def resolve(host: str) -> str:
    """The IPv4 address of ``host`` (an address or a name); ValueError when it does not resolve."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"the host {host!r} does not resolve to an address ({e})") from None
    return infos[0][4][0]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def local_ip_towards(host: str) -> str | None:
    """The address of this machine that packets to ``host`` leave from (what ``host`` can
    reach us on); None when no route leads there. Sends nothing (a UDP connect)."""
    if is_loopback(host):
        return "127.0.0.1"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((host, 9))
        return s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()


def machine_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (for advice on --host)."""
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not is_loopback(a.address):
                out.append(a.address)
    return sorted(set(out))


def outward_address() -> str | None:
    """The address this machine reaches other machines from (its default route's), else its
    first non-loopback address; None when it has none."""
    guess = local_ip_towards("192.0.2.1")  # TEST-NET-1: only the route is looked up
    if guess and not is_loopback(guess):
        return guess
    addrs = machine_addresses()
    return addrs[0] if addrs else None


def tcp_problem(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to host:port opens, else why not, in words."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return (f"nothing listens at {host}:{port} (connection refused): is a node of the mesh running "
                "there? `mesh status` on that machine shows its address")
    except TimeoutError:
        return (f"{host}:{port} does not answer (no reply in {timeout:g} s): a wrong address, a machine "
                "that is down, or a firewall dropping the port")
    except OSError as e:
        return f"{host}:{port} cannot be reached: {e.strerror or e}"


def handshake_problem(host: str, port: int, token: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the peer completes a CURVE handshake with the key of ``token``; else why not.

    A peer whose mesh has another token cannot open our HELLO and drops the connection,
    which the client side sees as a failed handshake: the one way to tell a wrong token
    from outside without the peer's logs."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    from ..wire.auth import MeshKeys, secure_client

    failed = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
              zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client(sock, MeshKeys.from_token(token))
    mon = sock.get_monitor_socket()
    result = (f"{host}:{port} took the connection but did not answer as a meshcompute node in {timeout:g} s "
              "(is it the mesh's port? a proxy or firewall in between?)")
    try:
        sock.connect(f"tcp://{host}:{port}")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not mon.poll(int(left * 1000) + 1):
                break
            event = recv_monitor_message(mon)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                result = None
                break
            if event in failed:
                result = (f"the node at {host}:{port} refused this node's key: the token is not that "
                          "mesh's (use the one `mesh start` printed there), or no meshcompute node listens "
                          "on that port")
                break
    finally:
        sock.disable_monitor()
        mon.close(0)
        sock.close(0)
        ctx.term()
    return result


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUse` (naming what holds it) when ``host:port`` cannot be bound;
    MeshError when ``host`` is no address of this machine. Port 0 is always free."""
    if not port:
        return
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As libzmq binds (SO_REUSEADDR): a port left in TIME_WAIT is not "in use".
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {host} is in use by {describe_holder(port)}") from None
        if e.errno == errno.EADDRNOTAVAIL:
            addrs = ", ".join(machine_addresses()) or "none but 127.0.0.1"
            raise MeshError(f"{host} is not an address of this machine (its addresses: {addrs})") from None
        raise MeshError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    finally:
        s.close()


def port_holders(port: int) -> list[int | None]:
    """Pids listening on TCP ``port`` (None for one we may not see: another user's)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return []
    return sorted({c.pid for c in conns if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN},
                  key=lambda p: p or 0)


def describe_holder(port: int, nodes: list[dict] | None = None) -> str:
    """Who listens on ``port``, in words: a meshcompute node of this machine (from ``nodes``,
    daemon.json records), another process by pid and command, or whatever can be told."""
    if nodes is None:
        from .launcher import all_sessions

        nodes = all_sessions()
    pids = port_holders(port)
    if not pids:
        return "another process (not one this user can see; `ss -ltnp` as root names it)"
    parts = []
    for pid in pids:
        node = next((n for n in nodes if int(n.get("pid", 0)) == pid), None)
        if node is not None:
            what = "`mesh start`/`mesh join`" if node.get("standalone") else "a driver's embedded node"
            parts.append(f"meshcompute node {node.get('node_id')} (pid {pid}, started by {what}; "
                         "`mesh stop` stops it)")
            continue
        if pid is None:
            parts.append("a process of another user")
            continue
        try:
            p = psutil.Process(pid)
            cmd = " ".join(" ".join(p.cmdline()).split()) or p.name()
        except psutil.Error:
            cmd = "?"
        parts.append(f"pid {pid} ({cmd[:120]})")
    return "; ".join(parts)
