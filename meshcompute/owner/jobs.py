"""A driver's job: its record in the control store's jobs table, and the id it learns from it.

Its daemon records every driver when it registers (``job_add``, a write nobody
waits for, so REGISTERED is not held up by the control store).  The driver then
sends the same ``job_add`` itself, keyed by its own address: the first of the two
to commit creates the record and the other only adds what it lacks, and both are
answered with the one ``%08x`` id (gcs/state.py).  The id goes into every
PUSH_TASKS of the driver, so its workers know the job of what they run.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import threading
import time
from typing import Any

from ..wire.messages import Msg

log = logging.getLogger("meshcompute")

JOB_WAIT_S = 2.0
"""How long ``init()`` waits for the job id.  It takes a few milliseconds; without a
quorum the answer comes later, once one forms (the request stays up to
JOB_REQUEST_S), and ``get_job_id()`` is '' until then."""
JOB_REQUEST_S = 30.0
ENTRYPOINT_CHARS = 1000
"""A driver's command line kept in the jobs table at most (``python -c`` takes a whole
program: the table is replicated, and kept in every snapshot)."""


def entrypoint() -> str:
    """The driver's command line, as Ray shows a driver job's entrypoint."""
    text = shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return text if len(text) <= ENTRYPOINT_CHARS else text[:ENTRYPOINT_CHARS - 3] + "..."


def register_driver(io: Any, tasks: Any, node_id: str, namespace: str) -> None:
    """Learn this driver's job id from the control store into ``tasks.job_id`` (a TaskQueues);
    waits up to JOB_WAIT_S for it (any thread but the I/O thread)."""
    got = threading.Event()
    info = {"node_id": node_id, "pid": os.getpid(), "namespace": namespace, "entrypoint": entrypoint(),
            "started": time.time()}
    if os.environ.get("MESH_SUBMISSION_ID"):  # the driver of a submitted job (node/jobs.py)
        info["submission_id"] = os.environ["MESH_SUBMISSION_ID"]
    op = ("job_add", io.address, info)

    def answer(value: Any) -> None:
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "ok" and isinstance(value[1], str):
            tasks.job_id = value[1]
        else:
            log.warning("the control store gave this driver no job id (%s); get_job_id() returns ''", value)
        got.set()

    def send() -> None:
        req_id = io.next_req_id()
        io.on_reply(req_id, answer)
        io.send(io.daemon_addr, Msg.GCS_REQUEST, req_id, op, JOB_REQUEST_S)

    io.post(send)
    got.wait(JOB_WAIT_S)
