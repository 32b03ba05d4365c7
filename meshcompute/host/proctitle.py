"""Process titles: every process of a node says its role in ``ps`` and ``top``.

Without them a node is a row of identical ``python -m meshcompute.node.daemon``
lines (the zygote and the workers are forks of the daemon).  The title starts with
the role (``mesh-daemon``, ``mesh-zygote``, ``mesh-worker``, ``mesh-actor <Class>``)
and keeps the daemon's original command line after ``::``: tools and tests find a
node's processes by it (``--session <dir>``).  The short name that ``ps -o comm``,
``top`` and ``pgrep NAME`` show is the role alone.

``setproctitle`` (the library Ray, Celery and gunicorn use) rewrites the command
line; without it only the short name changes (``prctl(PR_SET_NAME)``).
"""

from __future__ import annotations

import ctypes
import os

_PR_SET_NAME = 15
_original: str | None = None


def _original_cmdline() -> str:
    """The command line this process (or the daemon it was forked from) started with."""
    global _original
    if _original is None:
        try:
            with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
                _original = f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            _original = ""
    return _original


def set_title(role: str, detail: str = "") -> None:
    """Name this process ``<role> <detail> :: <original command line>``; never raises."""
    original = _original_cmdline()  # read before the first change; forks inherit it
    title = f"{role} {detail}".strip() + (f" :: {original}" if original else "")
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except Exception:  # noqa: BLE001 - not installed or not supported: the short name still changes
        pass
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(role.encode()[:15]), 0, 0, 0)
    except Exception:  # noqa: BLE001 - not Linux
        pass
