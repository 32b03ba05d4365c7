"""A test bed of hosts: Linux network namespaces on one bridge (needs root and ``ip``).

Host ``i`` (1..N) is the namespace ``<prefix><i>`` with loopback up and one
interface, ``eth0``, at ``<subnet> + 10 + i`` (10.77.0.11, .12, ... by default).
``eth0`` is one end of a veth pair; the other end, ``<prefix>v<i>``, sits in the
root namespace on the bridge ``<prefix>br0``.  The bridge has no address and
nothing is routed: hosts reach each other and nothing else, and the root
namespace cannot reach them.  Pulling the host side of a veth down (:meth:`cut`)
takes that host off the network; :meth:`heal` puts it back.

    with TestBed(3) as bed:                         # up on enter, down on exit
        server = bed.spawn(1, [sys.executable, "-m", "my.server", bed.address(1)])
        out = bed.exec(2, ["python3", "-c", "..."], timeout=10)
        bed.cut(1); ...; bed.heal(1)

:meth:`TestBed.down` (and :func:`teardown` by prefix, for the CLI or after a crash)
kills every process still in the namespaces and deletes the namespaces, veths and
bridge; it is safe to call twice.  ``scripts/netns.py`` is the command line.

This module lives in the package (not only under ``scripts/``) so tests and
benchmarks can import it wherever they run from; it imports nothing but the
standard library and does nothing on import.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

__all__ = [
    "NetnsError",
    "TestBed",
    "measure_tcp_throughput",
    "existing",
    "netns_unavailable_reason",
    "teardown",
]

DEFAULT_PREFIX = "mesh"
DEFAULT_SUBNET = "10.77.0.0/24"
HOST_OFFSET = 10  # host i is at network address + 10 + i
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,8}$")
_IFNAMSIZ = 15


class NetnsError(RuntimeError):
    """An ``ip`` command failed, or the bed is not in the state asked for."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or f'exit status {proc.returncode}'}")
    return proc


_unavailable: list[str | None] = []


def netns_unavailable_reason() -> str | None:
    """None if this process can build a bed here; otherwise why not (a skip reason).

    Checks for root, the ``ip`` command, and that a namespace can really be created
    and deleted (``ip netns add`` fails in many containers).  Cached.
    """
    if _unavailable:
        return _unavailable[0]
    reason: str | None = None
    if not sys.platform.startswith("linux"):
        reason = "network namespaces need Linux"
    elif os.geteuid() != 0:
        reason = "network namespaces need root"
    elif shutil.which("ip") is None:
        reason = "the `ip` command (iproute2) is not installed"
    else:
        probe = f"mcprobe{os.getpid()}"
        add = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if add.returncode != 0:
            reason = f"`ip netns add` fails here: {add.stderr.strip()}"
        else:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
            probe_br = f"mcprobe{os.getpid() % 100000}"[:_IFNAMSIZ]
            br = subprocess.run(["ip", "link", "add", probe_br, "type", "bridge"], capture_output=True, text=True)
            if br.returncode != 0:
                reason = f"cannot create a bridge here: {br.stderr.strip()}"
            else:
                subprocess.run(["ip", "link", "del", probe_br], capture_output=True)
    _unavailable.append(reason)
    return reason


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    out = _ip("-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def existing(prefix: str) -> tuple[list[str], list[str]]:
    """(namespaces, root-namespace links) that belong to the bed ``prefix``."""
    ns_re = re.compile(rf"^{re.escape(prefix)}\d+$")
    link_re = re.compile(rf"^{re.escape(prefix)}(v\d+|br0)$")
    return ([n for n in _namespaces() if ns_re.match(n)], [n for n in _links() if link_re.match(n)])


def _ns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_all(namespaces: list[str], grace: float = 2.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = [p for ns in namespaces for p in _ns_pids(ns)]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if pids:
                time.sleep(0.02)
        if not pids:
            return


def teardown(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove the bed ``prefix``: kill its processes, delete namespaces, veths, bridge.

    Works from names alone (after a crash, from another process); safe to call when
    nothing is left.  Returns what it removed.  Raises ``NetnsError`` if something
    remains afterwards.
    """
    _check_prefix(prefix)
    namespaces, links = existing(prefix)
    _kill_all(namespaces)
    # Host-side veths first (that deletes their peers), then namespaces, bridge last.
    for link in sorted(links, key=lambda n: n.endswith("br0")):
        _ip("link", "del", link, check=False)
    for ns in namespaces:
        _ip("netns", "del", ns, check=False)
    deadline = time.monotonic() + 10.0  # namespace cleanup in the kernel is asynchronous
    while True:
        left_ns, left_links = existing(prefix)
        if not left_ns and not left_links:
            return namespaces + links
        if time.monotonic() > deadline:
            raise NetnsError(f"could not remove {left_ns + left_links}")
        for link in left_links:
            _ip("link", "del", link, check=False)
        for ns in left_ns:
            _ip("netns", "del", ns, check=False)
        time.sleep(0.05)


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"prefix {prefix!r}: 1-9 characters, a lowercase letter then letters or digits")


class TestBed:
    """N hosts in network namespaces on one bridge; see the module docstring.

    ``up()`` refuses (``NetnsError``) if any part of a bed with this prefix exists,
    unless ``replace=True``, which tears the old one down first.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, n: int, prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET,
                 replace: bool = False) -> None:
        _check_prefix(prefix)
        net = ipaddress.ip_network(subnet)
        if not isinstance(net, ipaddress.IPv4Network) or not net.is_private:
            raise ValueError(f"subnet {subnet}: must be a private IPv4 network")
        if n < 1 or HOST_OFFSET + n >= net.num_addresses - 1:
            raise ValueError(f"{n} hosts do not fit in {subnet} (host i is at +{HOST_OFFSET}+i)")
        if len(f"{prefix}v{n}") > _IFNAMSIZ or len(f"{prefix}br0") > _IFNAMSIZ:
            raise ValueError(f"prefix {prefix!r} makes interface names longer than {_IFNAMSIZ} characters")
        self.n = n
        self.prefix = prefix
        self.subnet = net
        self.replace = replace
        self.bridge = f"{prefix}br0"
        self._procs: list[subprocess.Popen] = []

    @classmethod
    def attach(cls, prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET) -> TestBed:
        """A handle on a bed that is already up (made by another process)."""
        _check_prefix(prefix)
        namespaces, _ = existing(prefix)
        if not namespaces:
            raise NetnsError(f"no test bed with prefix {prefix!r} is up")
        return cls(max(int(ns[len(prefix):]) for ns in namespaces), prefix, subnet)

    # -- names

    @property
    def hosts(self) -> range:
        return range(1, self.n + 1)

    def namespace(self, i: int) -> str:
        self._check_host(i)
        return f"{self.prefix}{i}"

    def address(self, i: int) -> str:
        """Host i's IPv4 address (10.77.0.(10+i) by default)."""
        self._check_host(i)
        return str(self.subnet.network_address + HOST_OFFSET + i)

    def veth(self, i: int) -> str:
        """The root-namespace end of host i's link (the one cut/heal act on)."""
        self._check_host(i)
        return f"{self.prefix}v{i}"

    def _check_host(self, i: int) -> None:
        if not isinstance(i, int) or not 1 <= i <= self.n:
            raise ValueError(f"host {i!r}: hosts are 1..{self.n}")

    # -- lifecycle

    def up(self) -> TestBed:
        present = [x for part in existing(self.prefix) for x in part]
        if present:
            if not self.replace:
                raise NetnsError(f"a test bed with prefix {self.prefix!r} already exists ({', '.join(present)}); "
                                 f"remove it with `python scripts/netns.py down --prefix {self.prefix}`")
            teardown(self.prefix)
        try:
            _ip("link", "add", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            _ip("link", "set", self.bridge, "up")
            plen = str(self.subnet.prefixlen)
            for i in self.hosts:
                ns, veth = self.namespace(i), self.veth(i)
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/{plen}", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            teardown(self.prefix)
            raise
        return self

    def down(self) -> None:
        """Kill what runs in the hosts, delete everything; safe to call twice."""
        try:
            teardown(self.prefix)
        finally:
            for proc in self._procs:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            self._procs.clear()

    def __enter__(self) -> TestBed:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- processes

    def command(self, i: int, argv: list[str]) -> list[str]:
        """The argv that runs ``argv`` inside host i."""
        return ["ip", "netns", "exec", self.namespace(i), *argv]

    def exec(self, i: int, argv: list[str], *, timeout: float | None = 60, check: bool = False,
             capture: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` in host i and wait (``subprocess.run``; text output captured by default)."""
        if capture:
            kwargs.setdefault("capture_output", True)
            kwargs.setdefault("text", True)
        return subprocess.run(self.command(i, argv), timeout=timeout, check=check, **kwargs)

    def spawn(self, i: int, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start ``argv`` in host i and return its Popen (the pid is the process itself:
        ``ip netns exec`` execs it).  ``down()`` kills and reaps it if still running."""
        proc = subprocess.Popen(self.command(i, argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def pids(self, i: int) -> list[int]:
        """Processes running in host i."""
        return _ns_pids(self.namespace(i))

    # -- faults

    def cut(self, i: int) -> None:
        """Take host i off the network (its link goes down; its processes keep running)."""
        _ip("link", "set", self.veth(i), "down")

    def shape(self, i: int, mbit: float, latency_ms: float = 50.0) -> None:
        """Limit host i's link to ``mbit`` Mbit/s each way: a ``tc`` token bucket on both
        ends of its veth, queueing into pfifo_fast, whose three bands serve packets by
        their IP TOS (low delay first, bulk last) as Linux's classic default does; a
        real interface's fq_codel would instead serve a flow that sends little before
        one that sends much.  The burst allows one 64 KiB segment: veths pass TSO-sized
        packets."""
        if shutil.which("tc") is None:
            raise NetnsError("the `tc` command (iproute2) is not installed")
        bucket = ["root", "handle", "1:", "tbf", "rate", f"{mbit}mbit", "burst", "256kb",
                  "latency", f"{latency_ms}ms"]
        for dev, prefix in ((self.veth(i), []), ("eth0", ["ip", "netns", "exec", self.namespace(i)])):
            for rule in (["qdisc", "replace", "dev", dev, *bucket],
                         ["qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:", "pfifo_fast"]):
                argv = [*prefix, "tc", *rule]
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                if proc.returncode != 0:
                    raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip()}")

    def heal(self, i: int, timeout: float = 5.0) -> None:
        """Put host i back on the network; returns once the link is up."""
        veth = self.veth(i)
        _ip("link", "set", veth, "up")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(f"/sys/class/net/{veth}/operstate") as f:
                if f.read().strip() == "up":
                    return
            time.sleep(0.01)
        raise NetnsError(f"{veth} did not come up within {timeout}s")


# --------------------------------------------------------------------------- throughput

_RECEIVER = r"""
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
buf = bytearray(4 << 20)
view = memoryview(buf)
total = 0
first = None
while True:
    n = conn.recv_into(view)
    if first is None:
        first = time.perf_counter()
    if not n:
        break
    total += n
end = time.perf_counter()
conn.close()
print(json.dumps({"bytes": total, "seconds": end - first}), flush=True)
"""

_SENDER = r"""
import socket, sys, time
host, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 10
while True:
    try:
        s = socket.create_connection((host, port), timeout=30)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
chunk = memoryview(bytes(4 << 20))
left = nbytes
while left > 0:
    n = min(left, len(chunk))
    s.sendall(chunk[:n])
    left -= n
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
"""


def measure_tcp_throughput(bed: TestBed, a: int, b: int, nbytes: int = 512 << 20,
                           port: int = 5201, timeout: float = 120.0) -> float:
    """Move ``nbytes`` over one TCP connection from host ``a`` to host ``b``; MB/s (10**6 B/s).

    Plain python sockets (4 MiB ``sendall``/``recv_into``), so this is what a Python
    process can push through the veth/bridge path, not a kernel limit.  Timed by the
    receiver, from its first byte to EOF.
    """
    if a == b:
        raise ValueError("sender and receiver must be different hosts")
    receiver = bed.spawn(b, [sys.executable, "-c", _RECEIVER, bed.address(b), str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if receiver.stdout.readline().strip() != "ready":
            raise NetnsError(f"throughput receiver did not start: {receiver.stderr.read()[-2000:]}")
        sender = bed.exec(a, [sys.executable, "-c", _SENDER, bed.address(b), str(port), str(nbytes)],
                          timeout=timeout)
        if sender.returncode != 0:
            raise NetnsError(f"throughput sender failed: {sender.stderr[-2000:]}")
        out, err = receiver.communicate(timeout=timeout)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    result = json.loads(out.strip().splitlines()[-1])
    if result["bytes"] != nbytes:
        raise NetnsError(f"receiver got {result['bytes']} of {nbytes} bytes")
    return nbytes / result["seconds"] / 1e6
