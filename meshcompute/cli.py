"""The ``mesh`` command line."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(help="meshcompute: a peer-to-peer compute mesh for Python.", no_args_is_help=True,
                  add_completion=False)
console = Console()


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
    if removed:
        for path in removed:
            console.print(f"removed {path}")
    else:
        console.print("nothing to clean")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
