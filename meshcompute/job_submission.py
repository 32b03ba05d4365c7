"""Ray's Jobs API (``ray.job_submission``): run a driver script on the mesh and follow it.

```python
from meshcompute.job_submission import JobSubmissionClient, JobStatus

client = JobSubmissionClient("10.0.0.5:7777")        # any node; MESH_TOKEN from another machine
sid = client.submit_job(entrypoint="python train.py", runtime_env={"working_dir": "."})
for chunk in client.follow_job_logs(sid):             # or: async for ... in tail_job_logs(sid)
    print(chunk, end="")
assert client.get_job_status(sid) == JobStatus.SUCCEEDED
```

The entrypoint (a shell command) runs on the node the client talks to, supervised
there (node/jobs.py); its record is in the mesh's control store, so any node lists
it and answers for it; its output stays on its node and any node fetches it.  The
address is ``HOST:PORT`` of a node (the mesh's port, e.g. 7777), or a node of this
machine (its id or session dir), or None: ``$MESH_ADDRESS``, else the node of this
machine.  A node of another machine is reached with the mesh's token
(``MESH_TOKEN``, or ``token=``).  Ray's dashboard URLs (``http://...:8265``) name
nothing here, and say so.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .api.runtime_env import check as check_runtime_env
from .api.runtime_env import describe as describe_runtime_env
from .api.runtime_env import zip_package
from .host.remote import NodeConnection
from .wire.ids import random_id
from .wire.messages import Msg

__all__ = ["JobDetails", "JobInfo", "JobStatus", "JobSubmissionClient", "JobType"]

LOG_POLL_S = 0.25
"""How often following a job's logs asks for more while the job runs."""


class JobStatus(str, Enum):
    """A submitted job's status: PENDING until its entrypoint starts, then RUNNING, then one
    of the terminal three."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobType(str, Enum):
    SUBMISSION = "SUBMISSION"
    DRIVER = "DRIVER"


@dataclass
class JobInfo:
    """What the mesh records of a submitted job (times in ms since the epoch, as Ray's)."""

    status: JobStatus
    entrypoint: str
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    runtime_env: dict[str, Any] = field(default_factory=dict)
    driver_node_id: str | None = None
    driver_exit_code: int | None = None
    driver_agent_http_address: str | None = None


@dataclass
class JobDetails(JobInfo):
    """A JobInfo with its ids: ``submission_id``, and ``job_id`` once its driver called init()."""

    type: JobType = JobType.SUBMISSION
    submission_id: str | None = None
    job_id: str | None = None
    statuses: list[str] = field(default_factory=list)
    """Every status the job took, in order (meshcompute's own: Ray has no such field)."""


def _ms(t: Any) -> int | None:
    return int(t * 1000) if isinstance(t, (int, float)) else None


def _details(rec: dict, job_ids: dict[str, str]) -> JobDetails:
    status = JobStatus(rec["status"])
    return JobDetails(
        status=status, entrypoint=rec.get("entrypoint", ""), message=rec.get("message"),
        error_type="JOB_ENTRYPOINT_COMMAND_ERROR" if status == JobStatus.FAILED and rec.get("driver_exit_code")
        else None,
        start_time=_ms(rec.get("start_time")), end_time=_ms(rec.get("end_time")),
        metadata=dict(rec.get("metadata") or {}), runtime_env=dict(rec.get("runtime_env") or {}),
        driver_node_id=rec.get("node_id"), driver_exit_code=rec.get("driver_exit_code"),
        submission_id=rec["submission_id"], job_id=job_ids.get(rec["submission_id"]),
        statuses=list(rec.get("statuses") or ()))


class JobSubmissionClient:
    """Submit, follow and stop jobs on a mesh through any of its nodes.

    Args:
        address: ``HOST:PORT`` of a node, a node of this machine (id or session dir), or None
            (``$MESH_ADDRESS``, else this machine's node).
        metadata: added to every job's metadata.
        token: the mesh's token, to reach a node of another machine (default ``$MESH_TOKEN``).

    Ray's ``create_cluster_if_needed``, ``cookies``, ``headers`` and ``verify`` are for its HTTP
    server: accepted at their defaults, refused otherwise.
    """

    def __init__(self, address: str | None = None, create_cluster_if_needed: bool = False,
                 cookies: dict | None = None, metadata: dict[str, str] | None = None,
                 headers: dict | None = None, verify: Any = True, *, token: str | None = None) -> None:
        if address and "://" in address:
            raise ValueError(f"{address!r} is a URL: meshcompute has no HTTP job server. Give the HOST:PORT of "
                             "any node of the mesh (its mesh port, 7777 by default), e.g. '10.0.0.5:7777'.")
        for name, value, default in (("create_cluster_if_needed", create_cluster_if_needed, False),
                                     ("cookies", cookies, None), ("headers", headers, None),
                                     ("verify", verify, True)):
            if value != default:
                raise ValueError(f"JobSubmissionClient({name}=...) is for Ray's HTTP job server, which "
                                 "meshcompute has none of: the client talks to a node over the mesh's own "
                                 "authenticated sockets")
        self._default_metadata = _check_metadata(metadata)
        self._conn = NodeConnection(address, token)

    @property
    def address(self) -> str:
        """The node this client talks to."""
        return self._conn.where

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> JobSubmissionClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def submit_job(self, *, entrypoint: str, job_id: str | None = None, runtime_env: dict | None = None,
                   metadata: dict[str, str] | None = None, submission_id: str | None = None,
                   entrypoint_num_cpus: float | None = None, entrypoint_num_gpus: float | None = None,
                   entrypoint_memory: int | None = None, entrypoint_resources: dict | None = None) -> str:
        """Run ``entrypoint`` (a shell command) on the node this client talks to; returns its
        submission id (``submission_id``, or a new ``meshsubmit_...``).  ``runtime_env``:
        ``working_dir`` (the entrypoint runs in a copy of it, shipped from here), ``py_modules``,
        ``env_vars`` (set for the entrypoint), ``worker_process_setup_hook`` (a ``module.function``
        name); the job's tasks and actors inherit all four.  Raises RuntimeError when the node
        refuses it (an id in use, no control store quorum)."""
        for name, value in (("entrypoint_num_cpus", entrypoint_num_cpus), ("entrypoint_num_gpus", entrypoint_num_gpus),
                            ("entrypoint_memory", entrypoint_memory), ("entrypoint_resources", entrypoint_resources)):
            if value:
                raise ValueError(f"submit_job({name}=...) is not supported: the entrypoint runs on the node the "
                                 "client talks to and reserves nothing; its tasks ask for their own resources. "
                                 "Submit to a node that has what it needs (the client's address).")
        if job_id is not None:
            if submission_id is not None and submission_id != job_id:
                raise ValueError("give submission_id or job_id (its old name), not both")
            submission_id = job_id
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ValueError("entrypoint is a non-empty shell command, e.g. 'python script.py'")
        sid = submission_id or f"meshsubmit_{random_id()}"
        wire, packages = _wire_runtime_env(runtime_env)
        meta = dict(self._default_metadata, **_check_metadata(metadata))
        answer = self._conn.request(Msg.JOB_SUBMIT, sid, entrypoint, wire, meta, frames=packages, timeout=40.0)
        if answer[0] != "ok":
            raise RuntimeError(f"The job was not submitted: {answer[1]}")
        return answer[1]

    def _record(self, submission_id: str) -> dict:
        rec = self._conn.gcs(("sub", submission_id))
        if rec is None:
            raise RuntimeError(f"Job {submission_id} does not exist (list_jobs() shows the jobs the mesh knows)")
        return rec

    def _job_ids(self) -> dict[str, str]:
        """Submission id -> the job id its driver got from init()."""
        return {j["submission_id"]: j["job_id"] for j in self._conn.gcs(("jobs",)).values()
                if j.get("submission_id")}

    def get_job_status(self, job_id: str) -> JobStatus:
        return JobStatus(self._record(job_id)["status"])

    def get_job_info(self, job_id: str) -> JobDetails:
        return _details(self._record(job_id), self._job_ids())

    def list_jobs(self) -> list[JobDetails]:
        """Every submitted job the mesh records (the last 1,000 finished ones and all others)."""
        job_ids = self._job_ids()
        return [_details(rec, job_ids) for rec in self._conn.gcs(("subs",))]

    def stop_job(self, job_id: str) -> bool:
        """SIGTERM to the job's process group, SIGKILL to what is left after 3 s; True if it was
        running, False if it had ended."""
        answer = self._conn.request(Msg.JOB_STOP, job_id, timeout=15.0)
        if answer[0] != "ok":
            raise RuntimeError(f"Cannot stop job {job_id}: {answer[1]}")
        return bool(answer[1])

    def delete_job(self, job_id: str) -> bool:
        """Forget a job that ended (its record; its node drops the output with its session).
        Raises RuntimeError for a job that has not ended."""
        status = self.get_job_status(job_id)
        if not status.is_terminal():
            raise RuntimeError(f"Job {job_id} is {status}: stop it (stop_job) before deleting it")
        return bool(self._conn.gcs(("sub_delete", job_id)))

    def _log_chunk(self, job_id: str, offset: int) -> tuple[bytes, int]:
        answer = self._conn.request(Msg.JOB_LOGS, job_id, offset, timeout=15.0)
        if answer[0] != "ok":
            raise RuntimeError(f"Cannot get the logs of job {job_id}: {answer[1]}")
        return bytes(answer[1]["data"]), int(answer[1]["offset"])

    def get_job_logs(self, job_id: str) -> str:
        """The job's output so far (stdout and stderr together)."""
        out, offset = [], 0
        while True:
            data, offset = self._log_chunk(job_id, offset)
            if not data:
                return b"".join(out).decode(errors="replace")
            out.append(data)

    def follow_job_logs(self, job_id: str) -> Iterator[str]:
        """The job's output as it grows, until the job ends and everything it wrote came."""
        offset, pending = 0, b""
        while True:
            ended = self.get_job_status(job_id).is_terminal()  # asked first: nothing written after is lost
            while True:
                data, offset = self._log_chunk(job_id, offset)
                if not data:
                    break
                text = pending + data
                cut = len(text) - len(text.split(b"\n")[-1])  # whole lines, except at the end
                pending = text[cut:]
                if cut:
                    yield text[:cut].decode(errors="replace")
            if ended:
                if pending:
                    yield pending.decode(errors="replace")
                return
            time.sleep(LOG_POLL_S)

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """``follow_job_logs`` as Ray's async iterator: ``async for lines in client.tail_job_logs(id)``."""
        it = self.follow_job_logs(job_id)
        loop = asyncio.get_running_loop()
        done = object()
        while True:
            chunk = await loop.run_in_executor(None, next, it, done)
            if chunk is done:
                return
            yield chunk


def _check_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise ValueError("metadata maps str to str")
    return dict(metadata)


def _wire_runtime_env(runtime_env: dict | None) -> tuple[dict, list[bytes]]:
    """A job's runtime_env as JOB_SUBMIT carries it: directories zipped here, as message buffers."""
    env = check_runtime_env(runtime_env)
    hook = env.get("worker_process_setup_hook")
    if hook is not None and not isinstance(hook, str):
        raise ValueError("a job's runtime_env['worker_process_setup_hook'] is the 'module.function' name of a "
                         "function its workers can import (a function object cannot reach the job's driver)")
    wire: dict = {"given": describe_runtime_env(env)}
    packages: list[bytes] = []
    if env.get("env_vars"):
        wire["env_vars"] = env["env_vars"]
    if hook:
        wire["worker_process_setup_hook"] = hook
    if env.get("pip"):  # installed where the job's tasks and actors run, not for its driver
        wire["pip"] = env["pip"]
    if env.get("working_dir"):
        packages.append(zip_package(env["working_dir"]))
        wire["working_dir"] = 0
    for path in env.get("py_modules") or ():
        name = os.path.basename(path) if os.path.isdir(path) else ""
        packages.append(zip_package(path, name))
        wire.setdefault("py_modules", []).append((name, len(packages) - 1))
    return wire, packages
