"""``mesh`` commands that watch a mesh: top, timeline, memory, list, summary, logs."""

from __future__ import annotations

import json
import os
import sys
import time
from enum import Enum
from typing import Optional

import typer
from rich.table import Table

from . import _address, _node_or_exit, _say_which_mesh, _token, app, console


@app.command()
def top(
    address: Optional[str] = typer.Option(None, envvar="MESH_ADDRESS",
                                          help="host:port or node id of a member (default: the newest node on "
                                               "this machine)."),
    token: Optional[str] = typer.Option(None, envvar="MESH_TOKEN",
                                        help="The mesh's secret, to watch a member on another machine."),
    once: bool = typer.Option(False, help="Print one screen as text and exit (for scripts and logs)."),
    width: int = typer.Option(80, help="Width of the --once screen."),
    height: int = typer.Option(24, help="Height of the --once screen."),
) -> None:
    """A live view of the mesh: nodes, their CPU/memory/GPU/store use and tasks, actors.

    Keys: n nodes, a actors, q quit.  The view follows the mesh when the node it
    watches dies.

    Example: mesh top --address 10.0.0.5:7777
    """
    from ..host.launcher import find_any_node
    from ..observe.client import connect, wait_for_snapshot
    from ..observe.top import Rates, render_text, run

    address = _address(address)
    info = find_any_node(address)
    tok = _token(token)
    if info is None and not (address and tok):
        _node_or_exit(address)
    if info is not None:
        _say_which_mesh(info)
    try:
        client = connect(info, address=address, token=tok)
    except ValueError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    try:
        if once:
            if not wait_for_snapshot(client, timeout=10):
                console.print("[red]The node did not answer the monitor subscription.[/]")
                raise typer.Exit(1)
            rates = Rates()
            for _ in range(3):  # a rate needs two samples; three show a little history
                rates.sample(time.monotonic(), client.state.finished_total(), client.state.generation)
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    client.poll(0.1)
            sys.stdout.write(render_text(client, rates, "nodes", width, height))
            return
        run(client)
    finally:
        client.close()


@app.command()
def timeline(
    output: str = typer.Option("timeline.json", "--output", "-o", help="Where to write the trace."),
    address: Optional[str] = typer.Option(None, envvar="MESH_ADDRESS",
                                          help="host:port or node id of a node on this machine."),
) -> None:
    """Write a Chrome/Perfetto trace of the mesh's recent tasks (one lane per worker).

    Open the file in https://ui.perfetto.dev or chrome://tracing.

    Example: mesh timeline --output trace.json
    """
    from ..host.launcher import request
    from ..observe.timeline import build_trace, task_events, write_trace
    from ..wire.messages import Msg

    info = _node_or_exit(address)
    with console.status("collecting task spans from the mesh's workers"):
        lanes = request(info, Msg.TIMELINE, "mesh", timeout=15)
    events = build_trace(lanes if isinstance(lanes, list) else [])
    write_trace(events, output)
    spans = task_events(events)
    console.print(f"{len(spans)} tasks from {len({(e['pid'], e['tid']) for e in spans})} workers on "
                  f"{len({e['pid'] for e in spans})} nodes written to [bold]{output}[/]; open it in "
                  "https://ui.perfetto.dev or chrome://tracing")


@app.command()
def memory(
    address: Optional[str] = typer.Option(None, envvar="MESH_ADDRESS",
                                          help="host:port or node id of a node on this machine."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    limit: int = typer.Option(100, help="Show at most this many objects (largest first)."),
) -> None:
    """List the objects in the mesh's object stores: size, owner, copies, pins, spilling.

    Values of at most 100 KiB travel inline and live in their owner's memory; they
    are not in any store and not listed.

    Example: mesh memory --json
    """
    from ..host.launcher import request
    from ..observe.state import group_objects
    from ..wire.messages import Msg

    info = _node_or_exit(address)
    records = request(info, Msg.LIST_OBJECTS, "mesh", timeout=15)
    objects = group_objects(records if isinstance(records, list) else [])
    if as_json:
        sys.stdout.write(json.dumps(objects, indent=2, sort_keys=True) + "\n")
        return
    shown = objects[:limit]
    from rich import box

    from ..observe.top import human_bytes

    table = Table(title=f"objects in the mesh's stores (seen from {info['node_id']})", box=box.SIMPLE_HEAD)
    table.add_column("object id", no_wrap=True, min_width=20, overflow="ellipsis")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("owner", no_wrap=True)
    table.add_column("copies (* primary)")
    table.add_column("pins", justify="right", no_wrap=True)
    table.add_column("state")
    for o in shown:
        copies = " ".join(f"{c['node_id'][:8]}{'*' if c['primary'] else ''}"
                          f"{'(spilled)' if c['spilled'] and not c['in_memory'] else ''}" for c in o["copies"])
        owner_node = o["owner"].partition("/")[0][:8]
        owner_text = f"pid {o['owner_pid']}@{owner_node}" if o.get("owner_pid") else o["owner"].partition("@")[0]
        table.add_row(o["object_id"], human_bytes(o["size"]), owner_text, copies, str(o["pins"]), o["state"])
    console.print(table)
    in_mem = sum(o["size"] for o in objects if any(c["in_memory"] for c in o["copies"]))
    spilled = sum(o["size"] for o in objects if o["spilled"])
    more = f" ({len(objects) - len(shown)} more not shown)" if len(objects) > len(shown) else ""
    console.print(f"{len(objects)} objects{more}: {human_bytes(in_mem)} in memory, {human_bytes(spilled)} spilled")


# What `mesh list` lists (observe/state.py's KINDS), spelled out to keep the CLI's start light.
Listed = Enum("Listed", [(k, k) for k in "nodes actors tasks objects placement-groups jobs".split()], type=str)
Summarized = Enum("Summarized", {"tasks": "tasks"}, type=str)
_ADDRESS = typer.Option(None, envvar="MESH_ADDRESS", help="host:port or node id of a node on this machine.")
_TIMEOUT = typer.Option(30.0, help="Seconds to wait for the mesh's answer.")


@app.command("list")
def list_(
    kind: Listed = typer.Argument(..., help="What to list."),
    filters: Optional[list[str]] = typer.Option(None, "--filter", "-f",
                                                help="KEY=VALUE or KEY!=VALUE on a field; repeat it: all must hold."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    limit: int = typer.Option(100, help="Show at most this many."),
    detail: bool = typer.Option(False, "--detail", help="Every field, not only the default ones."),
    address: Optional[str] = _ADDRESS,
    timeout: float = _TIMEOUT,
) -> None:
    """List the mesh's nodes, actors, tasks, objects, placement groups or jobs, as `ray list` does.

    Example: mesh list actors --filter state=ALIVE --filter class_name=Counter
    """
    from ..observe.state import check_filters, collect, parse_filter, select, table

    try:
        parsed = check_filters(kind.value, [parse_filter(f) for f in filters or ()])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    records, total = select(kind.value, _ask(address, timeout, lambda s: collect(s, kind.value)), parsed, limit, detail)
    _print(records, as_json, lambda: table(kind.value, records, total, console.width))


@app.command()
def summary(
    kind: Summarized = typer.Argument(Summarized.tasks, help="What to summarize."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    address: Optional[str] = _ADDRESS,
    timeout: float = _TIMEOUT,
) -> None:
    """Count the mesh's recent tasks by function and state, as Ray's `ray summary tasks`.

    Example: mesh summary tasks
    """
    from ..observe.state import collect, summarize_tasks, summary_table

    result = summarize_tasks(_ask(address, timeout, lambda s: collect(s, "tasks")))
    _print(result, as_json, lambda: summary_table(result))


def _ask(address: Optional[str], timeout: float, read):
    """What ``read(source)`` reads through a node of this machine, or exit 1 saying why it could not."""
    from ..exceptions import MeshError
    from ..observe.state import Source

    try:
        return read(Source.for_node(_node_or_exit(address), timeout))
    except MeshError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None


def _print(value, as_json: bool, render) -> None:
    if as_json:
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    else:
        console.print(render())


@app.command()
def logs(
    node: Optional[str] = typer.Argument(None, envvar="MESH_ADDRESS",
                                         help="Node id (or a prefix of it), host:port or session dir "
                                              "of a node on this machine (default: the newest)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing what is appended."),
    lines: int = typer.Option(50, "--lines", "-n", help="Print the last N lines of each log first."),
) -> None:
    """Print the daemon and worker logs of a node (its session dir's logs/*.log).

    Example: mesh logs 3f9a --follow
    """
    from ..observe.logs import follow_logs, print_logs

    info = _node_or_exit(node)
    logs_dir = os.path.join(info["session_dir"], "logs")
    offsets = print_logs(logs_dir, lines, sys.stdout)
    if follow:
        try:
            follow_logs(logs_dir, offsets, sys.stdout)
        except KeyboardInterrupt:
            pass
