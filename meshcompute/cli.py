"""The ``mesh`` command line."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="meshcompute: a peer-to-peer compute mesh for Python.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode="rich")
console = Console()

DEFAULT_PORT = 7777


def _token(token: Optional[str]) -> Optional[str]:
    return token or os.environ.get("MESH_TOKEN") or None


def _start(host: str, port: int, join: list[str], num_cpus, num_gpus, resources, object_store_memory,
           token, block: bool) -> None:
    from ._private.launcher import start_node

    try:
        res = json.loads(resources) if resources else None
    except ValueError as e:
        raise typer.BadParameter(f"--resources must be JSON, e.g. '{{\"accel\": 2}}': {e}") from None
    if token:
        from ._private.auth import MeshKeys

        try:
            MeshKeys.from_token(token)
        except (TypeError, ValueError) as e:
            raise typer.BadParameter(str(e)) from None
    if join and not token:
        console.print("[red]Joining needs the mesh's token:[/] pass --token or set MESH_TOKEN "
                      "(`mesh start` printed it).")
        raise typer.Exit(2)
    try:
        proc, info = start_node(host=host, port=port, join=join, num_cpus=num_cpus, num_gpus=num_gpus,
                                resources=res, object_store_memory=object_store_memory, token=token,
                                standalone=True)
    except Exception as e:  # noqa: BLE001 - shown to the user
        console.print(f"[red]The node did not start:[/] {e}")
        raise typer.Exit(1) from None
    with open(os.path.join(info["session_dir"], "token")) as f:
        mesh_token = f.read().strip()
    tcp = info["tcp"].replace("tcp://", "")
    console.print(f"[green]Node {info['node_id']} serves at[/] [bold]{tcp}[/]")
    console.print(f"  resources: {info['resources'].get('CPU')} CPU, "
                  f"{int(info['store_capacity']) >> 20} MiB object store")
    console.print("  To add a machine, run there:")
    console.print(f"    [bold]mesh join {tcp} --token {mesh_token}[/]", soft_wrap=True)
    console.print("  Drivers on this machine: [bold]mesh.init()[/] (or address=\"auto\").")
    if block:
        def _stop(*_):
            proc.terminate()

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        proc.wait()


@app.command()
def start(
    host: str = typer.Option("127.0.0.1", help="IP address to serve the mesh on."),
    port: int = typer.Option(DEFAULT_PORT, help="TCP port (0 picks a free one)."),
    num_cpus: Optional[float] = typer.Option(None, help="CPUs to offer (default: all)."),
    num_gpus: Optional[int] = typer.Option(None, help="GPUs to offer (default: detected)."),
    resources: Optional[str] = typer.Option(None, help="Custom resources as JSON, e.g. '{\"accel\": 2}'."),
    object_store_memory: Optional[int] = typer.Option(None, help="Bytes of shared memory for objects."),
    token: Optional[str] = typer.Option(None, help="The mesh's secret (default: $MESH_TOKEN, or a new one)."),
    block: bool = typer.Option(False, help="Stay in the foreground until interrupted."),
) -> None:
    """Start the first node of a new mesh and print how others join it.

    Example: mesh start --host 10.0.0.5 --port 7777
    """
    _start(host, port, [], num_cpus, num_gpus, resources, object_store_memory, _token(token), block)


@app.command()
def join(
    peer: str = typer.Argument(..., help="host:port of any live member."),
    host: str = typer.Option("127.0.0.1", help="IP address to serve on."),
    port: int = typer.Option(0, help="TCP port (0 picks a free one)."),
    num_cpus: Optional[float] = typer.Option(None, help="CPUs to offer (default: all)."),
    num_gpus: Optional[int] = typer.Option(None, help="GPUs to offer (default: detected)."),
    resources: Optional[str] = typer.Option(None, help="Custom resources as JSON."),
    object_store_memory: Optional[int] = typer.Option(None, help="Bytes of shared memory for objects."),
    token: Optional[str] = typer.Option(None, help="The mesh's secret (default: $MESH_TOKEN)."),
    block: bool = typer.Option(False, help="Stay in the foreground until interrupted."),
) -> None:
    """Start a node that joins an existing mesh through any live member.

    Example: mesh join 10.0.0.5:7777 --host 10.0.0.6 --token <token>
    """
    _start(host, port, [peer], num_cpus, num_gpus, resources, object_store_memory, _token(token), block)


@app.command()
def status(
    address: Optional[str] = typer.Option(None, help="host:port of a node on this machine (default: the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show every node of the mesh: state, resources, object store.

    Example: mesh status --json
    """
    from ._private.launcher import find_node, query

    info = find_node(address)
    if info is None:
        console.print("No meshcompute node runs on this machine. Start one with [bold]mesh start[/].")
        raise typer.Exit(1)
    view = query(info, "mesh")
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2, sort_keys=True) + "\n")
        return
    table = Table(title=f"mesh seen from {view['self']}")
    for col in ("node", "address", "state", "CPU (free/total)", "GPU", "store used/capacity", "queued"):
        table.add_column(col)
    for n in view["nodes"]:
        total, avail = n.get("resources_total", {}), n.get("resources_available", {})
        store = n.get("store") or {}
        table.add_row(
            n["node_id"], (n.get("address") or "").partition("@")[2].replace("tcp://", ""), n["state"],
            f"{avail.get('CPU', 0):g}/{total.get('CPU', 0):g}", f"{total.get('GPU', 0):g}",
            f"{store.get('used', 0) >> 20}/{store.get('capacity', 0) >> 20} MiB", str(n.get("queued", 0)))
    console.print(table)
    console.print(f"control store leader: {view.get('leader') or 'none yet (single-node metadata)'}")


@app.command()
def stop() -> None:
    """Stop every node started on this machine with `mesh start` or `mesh join`.

    Example: mesh stop
    """
    from ._private.launcher import local_nodes, stop_node

    nodes = local_nodes()
    if not nodes:
        console.print("No node is running on this machine.")
        return
    for info in nodes:
        stop_node(info)
        console.print(f"stopped node {info['node_id']} ({info.get('tcp', '')})")


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
    from ._private.procutil import clean_stale_sessions

    removed = clean_stale_sessions()
    for path in removed:
        console.print(f"removed {path}")
    if not removed:
        console.print("nothing to clean")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
