"""``mesh-node``: run one node in the foreground, as a container's main process.

It decides from the environment whether to start a mesh or join one, waits for a
member to answer when it joins, then *becomes* ``mesh start --block --logs`` or
``mesh join PEER --block --logs`` (exec: same pid, so SIGTERM from the container
runtime reaches the command, which makes the node leave the mesh and exits 0).

Environment (every other ``MESH_*`` option variable reaches the command as usual:
``MESH_TOKEN``, ``MESH_HOST``, ``MESH_PORT``, ``MESH_NUM_CPUS``, ``MESH_METRICS_PORT``...):

``MESH_JOIN``
    Members to join through: comma-separated ``HOST:PORT``; a name may resolve to
    several addresses (a Kubernetes headless service), and any live one will do.
    Unset: start a new mesh.
``MESH_FOUNDER``
    The host name (``$HOSTNAME``, else the machine's) of the one node that starts the mesh when no member
    of ``MESH_JOIN`` answers within ``MESH_FOUNDER_WAIT_S`` (default 10 s); e.g. the
    first pod of a StatefulSet, ``meshcompute-0``.  Every other node waits for a member.
``MESH_JOIN_RETRY_S``
    Seconds between rounds of asking the members (default 1).

``mesh-node COMMAND...`` runs a driver instead (a Kubernetes Job): once a member answers,
a node of this machine joins through it (``mesh join``; ``MESH_NUM_CPUS=0`` keeps the
work off it), ``COMMAND`` runs (its ``init()`` finds that node), and the node leaves;
the exit status is the command's.

Nodes that find a member join it whatever their name, so a founder that restarts while
the mesh lives joins it again instead of starting a second mesh.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

from .netcheck import handshake_problem, machine_addresses, parse_peer, tcp_problem

PROBE_S = 2.0
"""How long (s) one address gets to answer a round's TCP connection and handshake."""


def candidates(join: str, own: set[str] | None = None) -> list[tuple[str, int]]:
    """Every IPv4 address:port that ``MESH_JOIN`` names, names resolved (all their addresses),
    this machine's own addresses left out; a name that does not resolve (yet) gives nothing."""
    own = set(machine_addresses()) if own is None else own
    out: list[tuple[str, int]] = []
    for item in (i.strip() for i in join.split(",")):
        if not item:
            continue
        host, port = parse_peer(item)
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            continue
        for info in infos:
            addr = (info[4][0], port)
            if addr[0] not in own and addr not in out:
                out.append(addr)
    return out


def answering(cands: list[tuple[str, int]], token: str | None,
              problem: Callable[[str, int, str | None], str | None] | None = None) -> tuple[str, int] | None:
    """The first candidate that takes a TCP connection and completes the mesh's handshake."""
    problem = problem or _problem
    for host, port in cands:
        if problem(host, port, token) is None:
            return host, port
    return None


def _problem(host: str, port: int, token: str | None) -> str | None:
    if token is None:
        return tcp_problem(host, port, PROBE_S)
    return tcp_problem(host, port, PROBE_S) or handshake_problem(host, port, token, PROBE_S)


def own_address() -> str | None:
    """This container's address: its host name's, else its first non-loopback address."""
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if not addr.startswith("127."):
            return addr
    except OSError:
        pass
    addrs = machine_addresses()
    return addrs[0] if addrs else None


def plan(env: Mapping[str, str], hostname: str, find: Callable[[], tuple[str, int] | None],
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
         say: Callable[[str], None] = print) -> list[str]:
    """The ``mesh`` arguments to run: start, or join the first member that answers (waiting)."""
    join = env.get("MESH_JOIN", "").strip()
    if not join:
        return ["start", "--block", "--logs"]
    founder = env.get("MESH_FOUNDER", "").strip() == hostname
    wait = float(env.get("MESH_FOUNDER_WAIT_S", "10"))
    retry = float(env.get("MESH_JOIN_RETRY_S", "1"))
    started, rounds = clock(), 0
    while True:
        peer = find()
        if peer is not None:
            say(f"mesh-node: joining the mesh through {peer[0]}:{peer[1]}")
            return ["join", f"{peer[0]}:{peer[1]}", "--block", "--logs"]
        if founder and clock() - started >= wait:
            say(f"mesh-node: no member of {join} answered in {wait:g} s: starting a new mesh ({hostname} is "
                "MESH_FOUNDER)")
            return ["start", "--block", "--logs"]
        if rounds % 10 == 0:
            left = max(0.0, wait - (clock() - started))
            say(f"mesh-node: waiting for a member of {join} to answer"
                + (f" (starting a new mesh in {left:.0f} s)" if founder else ""))
        rounds += 1
        sleep(retry)


def run_driver(peer: str, command: list[str]) -> int:
    """Join through ``peer`` with a node of this machine, run ``command`` (a driver, which finds
    that node), stop the node, and return the command's exit status (128 + signal if killed)."""
    mesh = [sys.executable, "-m", "meshcompute.cli"]
    if subprocess.run([*mesh, "join", peer]).returncode != 0:
        return 1
    try:
        child = subprocess.Popen(command)
        signal.signal(signal.SIGTERM, lambda *_: child.terminate())
        code = child.wait()
    finally:
        subprocess.run([*mesh, "stop"], stdout=subprocess.DEVNULL)
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> None:
    """``mesh-node``, or ``mesh-node COMMAND...`` to run a driver on a node that joins the mesh for
    it (``MESH_JOIN`` needed) and leaves when it ends; see the module's documentation."""
    command = sys.argv[1:] if argv is None else argv
    command = command[1:] if command[:1] == ["--"] else command
    # Until it becomes the node, SIGTERM just ends the wait.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    env = dict(os.environ)
    token = env.get("MESH_TOKEN") or None
    if token and token.startswith("REPLACE-ME"):
        sys.exit("mesh-node: MESH_TOKEN is the example's placeholder: put a secret of your own in its place "
                 "(docs/operating.md)")
    join = env.get("MESH_JOIN", "")
    if command and not join.strip():
        sys.exit("mesh-node: running a driver needs MESH_JOIN, the members of the mesh to join")
    if command:
        env.pop("MESH_FOUNDER", None)  # a driver's node never starts a mesh of its own
    try:
        hostname = env.get("HOSTNAME") or socket.gethostname()
        args = plan(env, hostname, lambda: answering(candidates(join), token),
                    say=lambda text: print(text, flush=True))
    except ValueError as e:  # MESH_JOIN is not HOST:PORT
        sys.exit(f"mesh-node: MESH_JOIN: {e}")
    if command:
        sys.exit(run_driver(args[1], command))
    if args[0] == "start" and not env.get("MESH_HOST"):
        host = own_address()  # others must reach it: not the loopback default of `mesh start`
        if host:
            os.environ["MESH_HOST"] = host
    os.environ.setdefault("MESH_PORT", "7777")  # `mesh join` would pick any free port
    os.execv(sys.executable, [sys.executable, "-m", "meshcompute.cli", *args])


if __name__ == "__main__":
    main()
