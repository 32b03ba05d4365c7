"""The process-wide handle to the running core (None when not initialized)."""

from __future__ import annotations

from typing import Any

core: Any = None  # the Core of this process, set by init() or by a worker at start
auto_init: Any = None  # () -> Core: init() with defaults, for a first .remote() before init (api/session.py)
