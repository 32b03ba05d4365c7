"""The ``mesh`` command line."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="meshcompute: a peer-to-peer compute mesh for Python.\n\n"
         "Every option shows the environment variable that sets its default ([dim]env var: MESH_...[/]). "
         "Shell completion: [bold]mesh --install-completion[/] (bash, zsh, fish, PowerShell).",
    no_args_is_help=True, add_completion=True, rich_markup_mode="rich")
console = Console()
err = Console(stderr=True)  # what is said about a command (which mesh) goes here: stdout may be --json

DEFAULT_PORT = 7777
JOIN_WAIT_S = 6.0
"""How long (s) `mesh join` waits for the mesh to take the new node in before it gives up
(the checks before it take at most a few seconds more: the whole stays within ~10 s)."""


def _token(token: Optional[str]) -> Optional[str]:
    return (token or "").strip() or None


def _address(address: Optional[str]) -> Optional[str]:
    # $MESH_ADDRESS is shared with init(), where "local" and "auto" also have a meaning.
    return None if address in (None, "", "auto", "local") else address


# The options `mesh start` and `mesh join` share, with the variables that set their defaults.
_NUM_CPUS = typer.Option(None, envvar="MESH_NUM_CPUS",
                         help="CPUs to offer (default: all, at most the container's CPU limit).")
_NUM_GPUS = typer.Option(None, envvar="MESH_NUM_GPUS", help="GPUs to offer (default: detected).")
_RESOURCES = typer.Option(None, envvar="MESH_RESOURCES", help="Custom resources as JSON, e.g. '{\"accel\": 2}'.")
_STORE = typer.Option(None, envvar="MESH_OBJECT_STORE_MEMORY",
                      help="Bytes of shared memory for objects (default: 30% of RAM or of the container's "
                           "memory limit).")
_SPILL_DIR = typer.Option(None, envvar="MESH_SPILL_DIR",
                          help="Directory for objects spilled from the store (default: in the node's session "
                               "dir, which may be in RAM: point it at a disk).")
_BLOCK = typer.Option(False, help="Stay in the foreground until interrupted (SIGINT or SIGTERM: the node leaves "
                                   "the mesh); the node also stops if this command is killed.")
_LOGS = typer.Option(False, "--logs", help="With --block: print the node's daemon and worker logs as they grow "
                                           "(for a container's log).")
_METRICS_PORT = typer.Option(None, envvar="MESH_METRICS_PORT",
                             help="Serve Prometheus metrics on this TCP port (0: any free one; default: off).")


def _check_token(token: Optional[str]) -> None:
    if token:
        from ..wire.auth import MeshKeys

        try:
            MeshKeys.from_token(token)
        except (TypeError, ValueError) as e:
            raise typer.BadParameter(str(e)) from None


def _start(host: str, port: int, join: list[str], num_cpus, num_gpus, resources, object_store_memory,
           token, block: bool, voters: int | None = None, spill_dir: str | None = None,
           metrics_port: int | None = None, logs: bool = False) -> None:
    from ..host.launcher import run_in_foreground, start_node, stop_node, wait_joined

    try:
        res = json.loads(resources) if resources else None
    except ValueError as e:
        raise typer.BadParameter(f"--resources must be JSON, e.g. '{{\"accel\": 2}}': {e}") from None
    try:
        with console.status("starting the node" + (f" and joining {join[0]}" if join else "")):
            proc, info = start_node(host=host, port=port, join=join, num_cpus=num_cpus, num_gpus=num_gpus,
                                    resources=res, object_store_memory=object_store_memory, token=token,
                                    standalone=True, voters=voters, spill_dir=spill_dir,
                                    metrics_port=metrics_port,
                                    parent_pid=os.getpid() if block else 0)  # --block: it dies with us
            try:
                joined = not join or wait_joined(info, JOIN_WAIT_S)
            except KeyboardInterrupt:
                joined = None
    except Exception as e:  # noqa: BLE001 - shown to the user
        console.print(f"[red]The node did not start:[/] {e}")
        raise typer.Exit(1) from None
    tcp = info["tcp"].replace("tcp://", "")
    if joined is None:  # interrupted: not left behind half joined
        stop_node(info)
        proc.wait(10)
        raise typer.Exit(130)
    if not joined:
        # Left running, it would serve alone and be the default of every later command.
        stop_node(info)
        proc.wait(10)
        console.print(f"[red]{join[0]} did not take the node in within {JOIN_WAIT_S:g} s[/] (it answered "
                      f"the checks, so it may not reach this node back at {tcp}: a firewall, or pass "
                      "--host with an address of this machine that it can reach). The node was stopped.")
        raise typer.Exit(1)
    _print_started(info, tcp, join)
    if block:
        follow = None
        if logs:
            from ..observe.logs import follow_logs

            def follow(alive):
                follow_logs(os.path.join(info["session_dir"], "logs"), {}, sys.stdout, alive=alive)

        code = run_in_foreground(proc, follow)
        if code is not None:
            console.print(f"[red]The node stopped by itself[/] (exit status {code}).")
            raise typer.Exit(1)


def _print_started(info: dict, tcp: str, join: list[str]) -> None:
    from ..host.meshes import mesh_name
    from ..host.netcheck import is_loopback, machine_addresses

    with open(os.path.join(info["session_dir"], "token")) as f:
        mesh_token = f.read().strip()
    host = tcp.rpartition(":")[0]
    verb = f"joined the mesh through {join[0]}" if join else "started a new mesh"
    console.print(f"[green]Node {info['node_id']} {verb}[/] (mesh {mesh_name(info)}); it serves at [bold]{tcp}[/]")
    console.print(f"  resources: {info['resources'].get('CPU')} CPU, "
                  f"{int(info['store_capacity']) >> 20} MiB object store")
    if info.get("metrics"):
        console.print(f"  Prometheus metrics: [bold]{info['metrics']}[/]")
    if is_loopback(host) and not join:
        addrs = machine_addresses()
        console.print(f"  It serves on {host}: only this machine can reach it. For a mesh of several "
                      "machines, serve on an address they reach: [bold]mesh stop[/], then [bold]mesh start "
                      f"--host {addrs[0] if addrs else 'IP'}[/]"
                      + (f" (this machine's addresses: {', '.join(addrs)})" if len(addrs) > 1 else "") + ".")
    if is_loopback(host):
        console.print("  Another node on this machine:")
    else:
        console.print("  To add a machine, run there (it serves on its own address toward this one; "
                      "--host picks another):")
    # The token in the environment, not on the command line, where every local user's `ps` sees it.
    console.print(f"    [bold]MESH_TOKEN={mesh_token} mesh join {tcp}[/]", soft_wrap=True)
    console.print("  Drivers on this machine: [bold]mesh.init()[/] (or address=\"auto\").")


@app.command()
def start(
    host: str = typer.Option("127.0.0.1", envvar="MESH_HOST",
                             help="IP address to serve the mesh on. The default serves this machine only; "
                                  "for other machines to join, give an address of this machine they reach."),
    port: int = typer.Option(DEFAULT_PORT, envvar="MESH_PORT", help="TCP port (0 picks a free one)."),
    num_cpus: Optional[float] = _NUM_CPUS,
    num_gpus: Optional[int] = _NUM_GPUS,
    resources: Optional[str] = _RESOURCES,
    object_store_memory: Optional[int] = _STORE,
    token: Optional[str] = typer.Option(None, envvar="MESH_TOKEN",
                                        help="The mesh's secret (default: a new one, printed)."),
    block: bool = _BLOCK,
    logs: bool = _LOGS,
    voters: int = typer.Option(3, envvar="MESH_VOTERS",
                               help="How many of the first nodes vote in the control store: 1, 3, 5 or 7. "
                                    "A majority of them must be up for names, placement groups and the KV."),
    spill_dir: Optional[str] = _SPILL_DIR,
    metrics_port: Optional[int] = _METRICS_PORT,
    allow_second_mesh: bool = typer.Option(False, help="Start a new mesh even though one runs on this machine "
                                                       "already (then each command says which it talks to)."),
) -> None:
    """Start the first node of a new mesh and print how others join it.

    Example: mesh start --host 10.0.0.5 --port 7777
    """
    from ..host.launcher import local_nodes

    if voters not in (1, 3, 5, 7):
        raise typer.BadParameter("--voters must be 1, 3, 5 or 7")
    token = _token(token)
    _check_token(token)
    running = local_nodes()
    if running and not allow_second_mesh:
        n = running[0]
        more = f" (and {len(running) - 1} more nodes)" if len(running) > 1 else ""
        console.print(f"[red]A mesh already runs on this machine:[/] node {n['node_id']} at "
                      f"{(n.get('tcp') or '').replace('tcp://', '')}{more}. Its drivers and commands use it; "
                      "[bold]mesh status[/] shows it, [bold]mesh stop[/] stops it. To run a second, separate "
                      "mesh beside it: [bold]mesh start --allow-second-mesh --port 0[/].")
        raise typer.Exit(1)
    _start(host, port, [], num_cpus, num_gpus, resources, object_store_memory, token, block, voters, spill_dir,
           metrics_port, logs)


@app.command()
def join(
    peer: str = typer.Argument(..., help="host:port of any live member."),
    host: Optional[str] = typer.Option(None, envvar="MESH_HOST",
                                       help="IP address to serve on (default: this machine's address toward "
                                            "the peer, so that the mesh can reach it)."),
    port: int = typer.Option(0, envvar="MESH_PORT", help="TCP port (0 picks a free one)."),
    num_cpus: Optional[float] = _NUM_CPUS,
    num_gpus: Optional[int] = _NUM_GPUS,
    resources: Optional[str] = _RESOURCES,
    object_store_memory: Optional[int] = _STORE,
    token: Optional[str] = typer.Option(None, envvar="MESH_TOKEN",
                                        help="The mesh's secret (`mesh start` printed it)."),
    block: bool = _BLOCK,
    logs: bool = _LOGS,
    spill_dir: Optional[str] = _SPILL_DIR,
    metrics_port: Optional[int] = _METRICS_PORT,
) -> None:
    """Start a node that joins an existing mesh through any live member.

    It checks the address, that the member answers and that the token is the mesh's
    before it starts, and that the mesh took the node in after; on any failure it
    exits non-zero, saying why, and leaves no node behind.

    Example: mesh join 10.0.0.5:7777 --token <token>
    """
    from ..host.netcheck import (
        handshake_problem,
        is_loopback,
        local_ip_towards,
        parse_peer,
        resolve,
        tcp_problem,
    )

    token = _token(token)
    if not token:
        console.print("[red]Joining needs the mesh's token:[/] pass --token or set MESH_TOKEN "
                      "(`mesh start` printed it).")
        raise typer.Exit(2)
    _check_token(token)
    try:
        peer_host, peer_port = parse_peer(peer)
        peer_ip = resolve(peer_host)
    except ValueError as e:
        console.print(f"[red]Cannot join:[/] {e}")
        raise typer.Exit(2) from None
    if host is None:
        host = local_ip_towards(peer_ip)
        if host is None:
            console.print(f"[red]Cannot join {peer}:[/] this machine has no route to {peer_ip}.")
            raise typer.Exit(1)
    elif is_loopback(host) and not is_loopback(peer_ip):
        console.print(f"[red]Cannot join {peer} serving on {host}:[/] that member is on another machine and "
                      f"could not reach this node there; leave --host out (this machine's address toward "
                      f"it is {local_ip_towards(peer_ip) or 'unknown'}) or give an address it can reach.")
        raise typer.Exit(2)
    with console.status(f"checking {peer}"):
        problem = tcp_problem(peer_ip, peer_port) or handshake_problem(peer_ip, peer_port, token)
    if problem:
        console.print(f"[red]Cannot join {peer}:[/] {problem}")
        raise typer.Exit(1)
    _start(host, port, [f"{peer_ip}:{peer_port}"], num_cpus, num_gpus, resources, object_store_memory, token,
           block, spill_dir=spill_dir, metrics_port=metrics_port, logs=logs)


def _say_which_mesh(info: dict) -> None:
    """When this machine runs nodes of several meshes, say (on stderr) which one a command talks to."""
    from ..host.launcher import local_nodes
    from ..host.meshes import group_by_mesh, mesh_name

    groups = group_by_mesh(local_nodes())
    if len(groups) < 2:
        return
    tcp = (info.get("tcp") or "").replace("tcp://", "") or "its session dir"
    err.print(f"[dim]mesh {mesh_name(info)}, through node {info['node_id'][:8]} at {tcp} (this machine runs "
              f"{len(groups)} meshes: --address or $MESH_ADDRESS picks another node)[/]")


@app.command()
def status(
    address: Optional[str] = typer.Option(None, envvar="MESH_ADDRESS",
                                          help="host:port or node id of a node on this machine (default: the "
                                               "newest)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    local: bool = typer.Option(False, "--local", help="Only this machine's node: no other node is asked."),
    check: bool = typer.Option(False, "--check", help="Print nothing and exit 0 if this machine's node answers "
                                                      "and the mesh took it in, else say why and exit 1 "
                                                      "(a readiness probe)."),
    alive: bool = typer.Option(False, "--alive", help="With --check: only that the node answers (a liveness "
                                                      "probe: a node still waiting to be taken in is alive)."),
    timeout: float = typer.Option(5.0, help="Seconds to wait for the node's answer."),
) -> None:
    """Show every node of the mesh: state, resources, object store, and its part in the
    control store (role, Raft term and commit index; other nodes' as gossiped).

    Example: mesh status --json; in a probe: mesh status --local --check
    """
    from ..host.launcher import find_node, node_problem, query

    if check:
        problem = node_problem(find_node(_address(address)), timeout, member=not alive)
        if problem:
            console.print(problem, soft_wrap=True)
            raise typer.Exit(1)
        return
    info = _node_or_exit(address, standing=True)
    if local:
        me = query(info, "node", timeout=timeout)
        view = {"nodes": [me], "self": me["node_id"], "leader": (me.get("control") or {}).get("leader")}
    else:
        view = query(info, "mesh", timeout=timeout)
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2, sort_keys=True) + "\n")
        return
    table = Table(title=f"mesh seen from {view['self']}")
    for col in ("node", "address", "state", "CPU (free/total)", "GPU", "store used/capacity", "queued",
                "control (role term commit)"):
        table.add_column(col)
    for n in view["nodes"]:
        total, avail = n.get("resources_total", {}), n.get("resources_available", {})
        store = n.get("store") or {}
        ctl = n.get("control") or {}
        role = f"{ctl['role']} {ctl['term']} {ctl['commit_index']}" if ctl.get("role") else "-"
        table.add_row(
            n["node_id"], (n.get("address") or "").partition("@")[2].replace("tcp://", ""), n["state"],
            f"{avail.get('CPU', 0):g}/{total.get('CPU', 0):g}", f"{total.get('GPU', 0):g}",
            f"{store.get('used', 0) >> 20}/{store.get('capacity', 0) >> 20} MiB", str(n.get("queued", 0)), role)
    console.print(table)
    console.print(f"control store leader: {view.get('leader') or 'none (no quorum)'}")


@app.command()
def stop() -> None:
    """Stop every node started on this machine with `mesh start` or `mesh join`.

    Example: mesh stop
    """
    from concurrent.futures import ThreadPoolExecutor

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from ..host.launcher import local_nodes, stop_node
    from ..host.meshes import group_by_mesh, mesh_name

    nodes = local_nodes()
    if not nodes:
        console.print("No node is running on this machine.")
        return
    several = len(group_by_mesh(nodes)) > 1
    names = {info["node_id"]: f" of mesh {mesh_name(info)}" if several else "" for info in nodes}
    columns = (SpinnerColumn(), TextColumn("stopping nodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("stop", total=len(nodes))

        def _stop(info: dict) -> dict:
            stop_node(info)
            progress.advance(task)
            return info

        # In parallel: each waits up to 30 s for its daemon to drain, leave the mesh and exit.
        with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
            for info in pool.map(_stop, nodes):
                progress.console.print(f"stopped node {info['node_id']} ({info.get('tcp', '')})"
                                       f"{names[info['node_id']]}")


def _node_or_exit(address: Optional[str], standing: bool = False) -> dict:
    """The node of this machine a command talks to (``standing``: only `mesh start`/`join` ones)."""
    from ..host.launcher import find_any_node, find_node

    address = _address(address)
    info = find_node(address) if standing else find_any_node(address)
    if info is None:
        if address:
            console.print(f"No meshcompute node of this machine matches {address!r}. "
                          "[bold]mesh status[/] lists them.")
        else:
            console.print("No meshcompute node runs on this machine. Start one with [bold]mesh start[/].")
        raise typer.Exit(1)
    _say_which_mesh(info)
    return info


@app.command()
def version() -> None:
    """Print the installed version.

    Example: mesh version
    """
    from . import __version__

    console.print(f"meshcompute {__version__}")


@app.command()
def clean() -> None:
    """Remove shared memory and session directories left by nodes that died.

    A node normally removes its own; one killed with SIGKILL cannot, and the next
    node started on this host cleans up after it.  This does it now.

    Example: mesh clean
    """
    from ..host.sessions import clean_stale_sessions

    removed = clean_stale_sessions()
    for path in removed:
        console.print(f"removed {path}")
    if not removed:
        console.print("nothing to clean")


from . import jobs, watch  # noqa: E402,F401 - registers job; top, timeline, memory, list, summary, logs


def main() -> None:
    app(prog_name="mesh")  # also under `python -m meshcompute.cli`: help and completion say `mesh`


if __name__ == "__main__":
    main()
