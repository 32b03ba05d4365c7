"""``mesh job``: submit a driver to the mesh, follow it, stop it (Ray's ``ray job``)."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Optional

import typer
from rich.table import Table

from . import app, console, err

job_app = typer.Typer(help="Run a driver on the mesh and follow it: submit, status, logs, stop, list, delete.",
                      no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(job_app, name="job")

_ADDRESS = typer.Option(None, envvar="MESH_ADDRESS",
                        help="HOST:PORT of any node of the mesh (another machine's needs --token), or a node "
                             "of this machine (default: the newest).")
_TOKEN = typer.Option(None, envvar="MESH_TOKEN", help="The mesh's secret, to reach a node on another machine.")


def _client(address: Optional[str], token: Optional[str]):
    from ..exceptions import MeshError
    from ..job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, token=(token or "").strip() or None)
    except (ConnectionError, MeshError, ValueError) as e:
        console.print(f"[red]{e}[/]", soft_wrap=True)
        raise typer.Exit(1) from None


def _fail(e: Exception) -> typer.Exit:
    console.print(f"[red]{e}[/]", soft_wrap=True)
    return typer.Exit(1)


def _follow(client, sid: str) -> None:
    """Print the job's output until it ends (Ctrl-C stops following, not the job)."""
    try:
        for text in client.follow_job_logs(sid):
            sys.stdout.write(text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        err.print(f"\nStopped following job '{sid}'; it goes on ([bold]mesh job stop {sid}[/] stops it).")
        raise typer.Exit(130) from None


def _ended(client, sid: str) -> int:
    info = client.get_job_info(sid)
    colour = "green" if info.status == "SUCCEEDED" else "red"
    err.print(f"[{colour}]Job '{sid}' {str(info.status).lower()}[/]: {info.message or ''}", soft_wrap=True)
    return 0 if info.status == "SUCCEEDED" else 1


@job_app.command()
def submit(
    command: list[str] = typer.Argument(..., help="The entrypoint, after --: one shell command line "
                                                  "(quoted), or a command and its arguments."),
    address: Optional[str] = _ADDRESS,
    token: Optional[str] = _TOKEN,
    working_dir: Optional[str] = typer.Option(None, help="A directory (or .zip) shipped to the node: the "
                                                         "entrypoint runs in a copy of it, importable, and "
                                                         "so do its tasks."),
    runtime_env_json: Optional[str] = typer.Option(None, help="runtime_env as JSON: env_vars, working_dir, "
                                                              "py_modules, worker_process_setup_hook."),
    metadata_json: Optional[str] = typer.Option(None, help="Metadata to record with the job, as a JSON object "
                                                           "of strings."),
    submission_id: Optional[str] = typer.Option(None, help="The job's id (default: a new meshsubmit_...); "
                                                           "unique in the mesh."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Print the id and return instead of following the "
                                                          "job's output until it ends."),
) -> None:
    """Run a driver on the node at --address, supervised there; print its output until it ends
    and exit 0 if it succeeded, 1 otherwise (with --no-wait: print its id and return).

    Example: mesh job submit --address 10.0.0.5:7777 --working-dir . -- python train.py --epochs 3
    """
    try:
        env = json.loads(runtime_env_json) if runtime_env_json else {}
        meta = json.loads(metadata_json) if metadata_json else None
    except ValueError as e:
        raise typer.BadParameter(f"not JSON: {e}") from None
    if not isinstance(env, dict):
        raise typer.BadParameter("--runtime-env-json must be a JSON object")
    if working_dir:
        env["working_dir"] = working_dir
    entrypoint = command[0] if len(command) == 1 else shlex.join(command)
    client = _client(address, token)
    try:
        try:
            sid = client.submit_job(entrypoint=entrypoint, runtime_env=env or None, metadata=meta,
                                    submission_id=submission_id)
        except (RuntimeError, ValueError) as e:
            raise _fail(e) from None
        err.print(f"Job '{sid}' submitted to {client.address}.")
        if no_wait:
            console.print(sid)
            err.print(f"  [bold]mesh job logs {sid} --follow[/], [bold]mesh job status {sid}[/], "
                      f"[bold]mesh job stop {sid}[/]")
            return
        _follow(client, sid)
        raise typer.Exit(_ended(client, sid))
    finally:
        client.close()


@job_app.command()
def status(
    submission_id: str = typer.Argument(..., help="The job's submission id."),
    address: Optional[str] = _ADDRESS,
    token: Optional[str] = _TOKEN,
    as_json: bool = typer.Option(False, "--json", help="Every field, machine-readable."),
) -> None:
    """Print a job's status and why it is so.

    Example: mesh job status meshsubmit_3f9a1c2e0b7d4e11
    """
    client = _client(address, token)
    try:
        info = client.get_job_info(submission_id)
    except RuntimeError as e:
        raise _fail(e) from None
    finally:
        client.close()
    if as_json:
        from dataclasses import asdict

        sys.stdout.write(json.dumps(asdict(info), indent=2, default=str) + "\n")
        return
    console.print(f"Job '{submission_id}': [bold]{info.status}[/] on node {info.driver_node_id}")
    if info.message:
        console.print(f"  {info.message}", soft_wrap=True, markup=False)


@job_app.command()
def logs(
    submission_id: str = typer.Argument(..., help="The job's submission id."),
    address: Optional[str] = _ADDRESS,
    token: Optional[str] = _TOKEN,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing what it writes until it ends."),
) -> None:
    """Print a job's output (stdout and stderr), fetched from the node that runs it.

    Example: mesh job logs meshsubmit_3f9a1c2e0b7d4e11 --follow
    """
    client = _client(address, token)
    try:
        if follow:
            _follow(client, submission_id)
        else:
            sys.stdout.write(client.get_job_logs(submission_id))
    except RuntimeError as e:
        raise _fail(e) from None
    finally:
        client.close()


@job_app.command()
def stop(
    submission_id: str = typer.Argument(..., help="The job's submission id."),
    address: Optional[str] = _ADDRESS,
    token: Optional[str] = _TOKEN,
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the job was signalled."),
) -> None:
    """Stop a job: SIGTERM to its processes, SIGKILL to those left after 3 s.

    Example: mesh job stop meshsubmit_3f9a1c2e0b7d4e11
    """
    import time

    client = _client(address, token)
    try:
        stopped = client.stop_job(submission_id)
        if not stopped:
            console.print(f"Job '{submission_id}' had ended: {client.get_job_status(submission_id)}")
            return
        deadline = time.monotonic() + 10
        while not no_wait and time.monotonic() < deadline:
            if client.get_job_status(submission_id).is_terminal():
                break
            time.sleep(0.2)
        console.print(f"Job '{submission_id}': {client.get_job_status(submission_id)}")
    except RuntimeError as e:
        raise _fail(e) from None
    finally:
        client.close()


@job_app.command("list")
def list_jobs(
    address: Optional[str] = _ADDRESS,
    token: Optional[str] = _TOKEN,
    as_json: bool = typer.Option(False, "--json", help="Every field, machine-readable."),
) -> None:
    """List the submitted jobs the mesh records (from any node).

    Example: mesh job list --address 10.0.0.6:7777
    """
    client = _client(address, token)
    try:
        jobs = client.list_jobs()
    except RuntimeError as e:
        raise _fail(e) from None
    finally:
        client.close()
    if as_json:
        from dataclasses import asdict

        sys.stdout.write(json.dumps([asdict(j) for j in jobs], indent=2, default=str) + "\n")
        return
    table = Table(title=f"{len(jobs)} submitted jobs")
    for col in ("submission id", "status", "node", "entrypoint", "message"):
        table.add_column(col)
    for j in jobs:
        table.add_row(j.submission_id, str(j.status), (j.driver_node_id or "")[:8], j.entrypoint,
                      (j.message or "").splitlines()[0] if j.message else "")
    console.print(table)


@job_app.command()
def delete(
    submission_id: str = typer.Argument(..., help="The job's submission id."),
    address: Optional[str] = _ADDRESS,
    token: Optional[str] = _TOKEN,
) -> None:
    """Forget a job that ended (`mesh job list` no longer shows it).

    Example: mesh job delete meshsubmit_3f9a1c2e0b7d4e11
    """
    client = _client(address, token)
    try:
        client.delete_job(submission_id)
    except RuntimeError as e:
        raise _fail(e) from None
    finally:
        client.close()
    console.print(f"Job '{submission_id}' deleted.")
