"""Starting node daemons, finding them, and talking to them from outside a driver."""

from __future__ import annotations

import glob
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

from .. import exceptions as exc
from .sessions import SESSIONS_ROOT, new_session_dir, pid_alive, remove_session, root_is_ours


def start_node(*, host: str | None = None, port: int = 0, join: list[str] | tuple = (),
               num_cpus: float | None = None, num_gpus: int | None = None,
               resources: dict | None = None, object_store_memory: int | None = None,
               token: str | None = None, parent_pid: int = 0, standalone: bool = False,
               extra_env: dict | None = None, voters: int | None = None,
               spill_dir: str | None = None,
               metrics_port: int | None = None) -> tuple[subprocess.Popen, dict]:
    """Start a node daemon and wait until it serves; returns (process, info).

    ``voters``: for the first node of a mesh, how many nodes vote in its control
    store (1, 3, 5 or 7; default 3).  ``spill_dir``: where the node spills objects
    (default ``$MESH_SPILL_DIR``, else its session dir).  ``metrics_port``: serve Prometheus
    metrics there (0: any free port; the URL is ``info["metrics"]``).  Raises MeshError saying why
    when it cannot start (:class:`~.netcheck.PortInUse` for a port that is taken).
    """
    if host is not None and port:
        from .netcheck import check_port_free

        check_port_free(host, port)  # before anything is made: the message names the holder
    session = new_session_dir()
    logs = os.path.join(session, "logs")
    os.makedirs(logs, exist_ok=True)
    if host is not None:
        from ..wire.auth import generate_token

        fd = os.open(os.path.join(session, "token"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token or generate_token())
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    # Workers import the driver's modules by name: give them the driver's path.
    paths = [pkg_parent, os.getcwd()] + [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra_env or {})
    ready_r, ready_w = os.pipe()
    cmd = [sys.executable, "-m", "meshcompute.node.daemon", "--session", session,
           "--ready-fd", str(ready_w)]
    if parent_pid:
        cmd += ["--parent-pid", str(parent_pid)]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(int(num_gpus))]
    if resources:
        cmd += ["--resources", json.dumps(resources)]
    if object_store_memory:
        cmd += ["--object-store-memory", str(int(object_store_memory))]
    if host is not None:
        cmd += ["--host", host, "--port", str(port)]
        if join:
            cmd += ["--join", ",".join(join)]
    if standalone:
        cmd += ["--standalone"]
    if voters is not None:
        cmd += ["--gcs-voters", str(int(voters))]
    if spill_dir:
        cmd += ["--spill-dir", spill_dir]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(int(metrics_port))]
    with open(os.path.join(logs, "daemon.log"), "ab") as out:
        proc = subprocess.Popen(cmd, pass_fds=(ready_w,), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    os.close(ready_w)
    line = b""
    deadline = time.monotonic() + 60
    try:
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                break
            r, _, _ = select.select([ready_r], [], [], min(left, 0.5))
            if r:
                chunk = os.read(ready_r, 65536)
                if not chunk:
                    break
                line += chunk
    except BaseException:
        # Interrupted (Ctrl-C) while it starts: a standing node runs in a session of its
        # own, so nothing else would ever stop it.
        proc.kill()
        proc.wait()
        remove_session(session)
        raise
    finally:
        os.close(ready_r)
    info = json.loads(line) if line.endswith(b"\n") else {}
    if "error" in info or not line.endswith(b"\n"):
        _fail_start(proc, session, info.get("error"), host, port)
    return proc, info


def _fail_start(proc: subprocess.Popen, session: str, error: str | None, host: str | None, port: int) -> None:
    """A daemon that did not come up: stop it, clean up after it, and raise with the cause."""
    if error is None:
        proc.kill()  # it did not say why: it may hang; no need to wait for it
    try:
        proc.wait(10)  # one that said why is cleaning up after itself
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    tail = ""
    try:
        with open(os.path.join(session, "logs", "daemon.log")) as f:
            tail = f.read()[-2000:].strip()
    except OSError:
        pass
    remove_session(session)
    if error and "Address already in use" in error and host is not None:
        from .netcheck import PortInUse, describe_holder

        raise PortInUse(f"port {port} on {host} is in use by {describe_holder(port)}")
    if error:
        raise exc.MeshError(f"the node daemon failed to start: {error}")
    code = proc.returncode
    said = f"; its log ends with:\n{tail}" if tail else " and left no log"
    raise exc.MeshError(f"the node daemon failed to start (exit status {code}){said}")


def run_in_foreground(proc: subprocess.Popen, follow: Any = None) -> int | None:
    """Wait for a node started with this process as its parent (``mesh start --block``) until it
    stops: SIGINT or SIGTERM make it leave the mesh and stop (then None); a node that stops by
    itself gives its exit status.  ``follow(alive)``, if given, runs meanwhile (printing logs)."""
    stopping = []

    def _stop(*_):
        stopping.append(True)
        proc.terminate()  # the node leaves the mesh, stops its workers and cleans up

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    if follow is not None:
        follow(lambda: proc.poll() is None)
    code = proc.wait()
    return None if stopping else code


def wait_joined(info: dict, timeout: float) -> bool:
    """Whether the node comes to know another live member within ``timeout`` s (a joining
    node learns the mesh's members only from a member's answer, so none means none came)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            view = query(info, "mesh", timeout=max(0.2, min(1.0, deadline - time.monotonic())))
            if any(n["node_id"] != info["node_id"] and n.get("state") == "alive" for n in view["nodes"]):
                return True
        except exc.MeshError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def local_nodes() -> list[dict]:
    """Standing nodes (``mesh start``/``join``) running on this host, newest first."""
    return [info for info in all_sessions() if info.get("standalone")]


def find_node(address: str | None) -> dict | None:
    """The local node whose TCP address, host:port, node id or session matches."""
    nodes = local_nodes()
    if address in (None, "auto"):
        return nodes[0] if nodes else None
    for info in nodes:
        tcp = info.get("tcp") or ""
        if address in (tcp, tcp.replace("tcp://", ""), info.get("node_id"), info.get("address"),
                       info.get("session_dir")):
            return info
    return None


def stop_node(info: dict, timeout: float = 30.0) -> bool:
    """Stop a node (SIGTERM, then SIGKILL after ``timeout`` s); its shared memory and session dir
    go too.  The node first drains: tasks running on its workers finish (up to ``MESH_DRAIN_S``,
    20 s by default) while new work goes elsewhere."""
    pid = int(info["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    # A daemon that was killed could not clean up after itself.
    remove_session(info["session_dir"])
    return True


def node_problem(info: dict | None, timeout: float = 5.0, member: bool = True) -> str | None:
    """Why this machine's node is not alive, or with ``member`` not a settled member of its mesh;
    None when it is (``mesh status --check``).

    Settled: the control store has taken the node in, and has every voter it can have (a
    learner waits to be promoted while there are fewer voters than the mesh asks for).  So
    a rolling restart that waits for readiness takes down the next voter only once the one
    before was replaced, and the voters keep their majority."""
    if info is None:
        return "no meshcompute node runs on this machine"
    try:
        me = query(info, "node", timeout=timeout)
    except exc.MeshError as e:
        return str(e)
    ctl = me.get("control") or {}
    if member and ctl.get("role") in (None, "joining"):
        return (f"node {me.get('node_id')} answers, but the mesh's control store has not taken it in yet "
                "(it needs a control store leader with a quorum)")
    voters, learners = len(ctl.get("voters") or ()), len(ctl.get("learners") or ())
    if member and voters < min(int(ctl.get("target_voters") or 0), voters + learners):
        return (f"node {me.get('node_id')} answers, but the control store has {voters} of its "
                f"{ctl.get('target_voters')} voters while a learner waits to be promoted")
    return None


def query(info: dict, what: str = "mesh", timeout: float = 5.0) -> Any:
    """Ask a node on this host for NODE_INFO without becoming a driver."""
    from ..wire.messages import Msg

    return request(info, Msg.NODE_INFO, what, timeout=timeout)


def request(info: dict, msg_type: Any, *fields: Any, timeout: float = 5.0) -> Any:
    """Send one request (its req_id goes first) to a node on this host; return the REPLY's value."""
    import zmq

    from ..wire.ids import random_id
    from ..wire.messages import Msg, decode, encode
    from ..wire.transport import Endpoint, recv

    ctx = zmq.Context()
    ep = Endpoint(ctx, info["node_id"], f"cli_{random_id()}", info["session_dir"])
    try:
        ep.send(info["address"], [encode(msg_type, 1, *fields)])
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not ep.inbox.poll(int(left * 1000) + 1):
                break
            frames = recv(ep.inbox, copy=True)
            msg = decode(frames[1])
            if msg[0] == Msg.REPLY and msg[1] == 1:
                return msg[2]
        raise exc.MeshError(f"the node at {info.get('tcp') or info['address']} did not answer in {timeout} s")
    finally:
        ep.close()
        ctx.term()


def all_sessions() -> list[dict]:
    """Every node on this host whose daemon runs (embedded ones too), newest first."""
    out = []
    if not root_is_ours():
        return out  # its files could name anyone's pids: never act on them
    for path in sorted(glob.glob(os.path.join(SESSIONS_ROOT, "*", "daemon.json")), reverse=True):
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if pid_alive(int(info.get("pid", 0))):
            out.append(info)
    return out


def find_any_node(ref: str | None) -> dict | None:
    """Like find_node, but also embedded nodes, and a node id prefix of at least 4 characters."""
    info = find_node(ref)
    if info is not None or ref in (None, "auto"):
        return info
    matches = [i for i in all_sessions()
               if ref in ((i.get("tcp") or "").replace("tcp://", ""), i.get("session_dir"), i.get("address"))
               or (len(ref) >= 4 and i.get("node_id", "").startswith(ref))]
    return matches[0] if len(matches) == 1 else None
