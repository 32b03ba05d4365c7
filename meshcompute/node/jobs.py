"""Submitted jobs (``mesh job submit``): entrypoints this node runs and supervises.

A job runs on the node it was submitted to.  Its record lives in the control
store's ``submissions`` table (gcs/state.py), so any node lists it and it outlives
a minority of nodes; its process and its output live here:

* JOB_SUBMIT: the record is committed PENDING first (a taken submission id is
  refused there, once for the whole mesh), then the shipped working_dir and
  py_modules are unpacked under ``<session>/jobs/<id>/``, the entrypoint starts
  (``/bin/sh -c``, in a process group of its own led by job_leader.py, which kills
  the group if the daemon dies; output to ``output.log``) and the
  record becomes RUNNING.  The entrypoint's ``init()`` finds this node through
  ``MESH_ADDRESS``, and its tasks inherit the job's runtime_env
  (``MESH_JOB_RUNTIME_ENV``).  The unpacking runs in the daemon's loop: a large
  working_dir (up to 100 MiB zipped) holds the node for as long as it takes.
* the liveness check reaps it: exit 0 is SUCCEEDED, anything else FAILED, with
  the exit code and the end of its output in the message;
* JOB_STOP: SIGTERM to its process group, SIGKILL to what is left of the group
  after STOP_GRACE_S; the record becomes STOPPED;
* JOB_LOGS: a slice of ``output.log`` from an offset.

A request for a job of another node (stop, logs) is forwarded to that node's
daemon and its answer relayed.  A node that dies takes its jobs' processes and logs
with it; the control store marks its jobs FAILED (gcs/state.py ``node_dead``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..wire.messages import Msg
from ..wire.transport import parse_address

log = logging.getLogger("meshcompute.daemon")

STOP_GRACE_S = 3.0
"""Seconds between SIGTERM and SIGKILL when a job is stopped (and when its node stops)."""
LOG_CHUNK_BYTES = 1 << 20
"""The most one JOB_LOGS answer carries; a client asks again from the new offset."""
FORWARD_TIMEOUT_S = 5.0
"""How long a request forwarded to the job's node waits for its answer."""
SUBMISSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""What a submission id may be: it names a directory here."""
MESSAGE_TAIL_CHARS = 2000
"""How much of a failed job's output its status message quotes."""

LEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "job_leader.py")
"""The job's first process (run by path: it imports nothing), which kills the job's whole
process group if the daemon dies."""


@dataclass
class Running:
    """A job's process on this node."""

    submission_id: str
    proc: subprocess.Popen
    log_path: str
    stop_at: float | None = None  # when STOP_GRACE_S is up after a stop (then SIGKILL)


def _answer(ok: bool, value: Any) -> tuple:
    return ("ok", value) if ok else ("error", value)


class Jobs:
    """The jobs this node runs, and the JOB_* requests of clients and other daemons."""

    def __init__(self, node_id: str, session_dir: str, address: Callable[[], str], control: Callable[[], Any],
                 send: Callable[..., None], gathers: Any, peer_views: Callable[[], dict]) -> None:
        self.node_id = node_id
        self.session_dir = session_dir
        self.address = address
        self.control = control
        self.send = send
        self.gathers = gathers
        self.peer_views = peer_views
        self.running: dict[str, Running] = {}

    def handlers(self) -> dict:
        return {Msg.JOB_SUBMIT: self.on_submit, Msg.JOB_STOP: self.on_stop, Msg.JOB_LOGS: self.on_logs}

    def _reply(self, sender: str, req_id: int, answer: tuple) -> None:
        self.send(sender, Msg.REPLY, req_id, answer)

    # ----------------------------------------------------------------- submit

    def on_submit(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, sid, entrypoint, runtime_env, metadata = msg
        problem = _check_submission(sid, entrypoint, runtime_env, metadata, len(frames))
        if problem:
            self._reply(sender, req_id, ("error", problem))
            return
        packages = [bytes(f.buffer if hasattr(f, "buffer") else f) for f in frames]
        record = {"entrypoint": entrypoint, "node_id": self.node_id, "metadata": dict(metadata or {}),
                  "runtime_env": dict(runtime_env.get("given") or {}), "start_time": time.time(),
                  "message": "starting the entrypoint", "driver_node_address": self.address()}

        def added(status: str, value: Any) -> None:
            if status != "ok" or not isinstance(value, tuple):
                self._reply(sender, req_id, ("error", f"the control store could not record the job: {value}"))
                return
            if value[0] == "exists":
                self._reply(sender, req_id, ("error", f"a job with submission id {sid!r} exists already "
                                                      f"(status {value[1].get('status')}); pick another id"))
                return
            self._reply(sender, req_id, ("ok", sid))
            self._launch(sid, entrypoint, runtime_env, packages)

        self.control().submit(("sub_add", sid, record), added, 30.0)

    def _launch(self, sid: str, entrypoint: str, runtime_env: dict, packages: list[bytes]) -> None:
        home = os.path.join(self.session_dir, "jobs", sid)
        log_path = os.path.join(home, "output.log")
        try:
            os.makedirs(home, exist_ok=True)
            env, cwd = self._environment(sid, home, runtime_env, packages)
            with open(log_path, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-S", LEADER, entrypoint, str(os.getpid())], cwd=cwd,
                                        env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        except Exception as e:  # noqa: BLE001 - said in the job's record
            self._update(sid, {"status": "FAILED", "end_time": time.time(),
                               "message": f"the entrypoint could not start: {type(e).__name__}: {e}"})
            return
        self.running[sid] = Running(sid, proc, log_path)
        self._update(sid, {"status": "RUNNING", "message": "the entrypoint is running", "driver_pid": proc.pid})

    def _environment(self, sid: str, home: str, runtime_env: dict, packages: list[bytes]) -> tuple[dict, str]:
        """The entrypoint's environment and working directory; the runtime_env its driver's
        tasks inherit names the directories unpacked here."""
        env = dict(os.environ)
        paths: list[str] = []
        inherited: dict[str, Any] = {}
        cwd = home
        if runtime_env.get("working_dir") is not None:
            cwd = _unpack(packages[runtime_env["working_dir"]], os.path.join(home, "working_dir"))
            paths.append(cwd)
            inherited["working_dir"] = cwd
        for i, (name, index) in enumerate(runtime_env.get("py_modules") or ()):
            where = _unpack(packages[index], os.path.join(home, "py_modules", str(i)))
            paths.append(where)
            if name:
                inherited.setdefault("py_modules", []).append(os.path.join(where, name))
            else:  # a .zip travels as it is: its files are the module's
                path = os.path.join(home, "py_modules", f"{i}.zip")
                with open(path, "wb") as f:
                    f.write(packages[index])
                inherited.setdefault("py_modules", []).append(path)
        env_vars = runtime_env.get("env_vars") or {}
        if env_vars:
            inherited["env_vars"] = dict(env_vars)
        if runtime_env.get("worker_process_setup_hook"):
            inherited["worker_process_setup_hook"] = runtime_env["worker_process_setup_hook"]
        if runtime_env.get("pip"):
            inherited["pip"] = runtime_env["pip"]  # checked again by the driver's init()
        env.update(env_vars)
        if paths:
            env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
        env.update(MESH_ADDRESS=self.session_dir, MESH_SUBMISSION_ID=sid,
                   MESH_JOB_RUNTIME_ENV=json.dumps(inherited))
        return env, cwd

    def _update(self, sid: str, fields: dict) -> None:
        self.control().write(("sub_update", sid, fields))

    # ------------------------------------------------------------ supervision

    def poll(self, now: float) -> None:
        """Reap jobs that ended and record how; SIGKILL what is left of stopped ones."""
        for sid, job in list(self.running.items()):
            code = job.proc.poll()
            if code is None:
                if job.stop_at is not None and now >= job.stop_at:
                    _signal_group(job.proc.pid, signal.SIGKILL)
                continue
            del self.running[sid]
            if job.stop_at is not None:
                _signal_group(job.proc.pid, signal.SIGKILL)  # what the shell left behind
                fields = {"status": "STOPPED", "message": "stopped (mesh job stop)"}
            elif code == 0:
                fields = {"status": "SUCCEEDED", "message": "the entrypoint exited with code 0"}
            else:
                said = f"exited with code {code}" if code > 0 else f"was killed by signal {-code}"
                fields = {"status": "FAILED",
                          "message": f"the entrypoint {said}; its output ends with:\n{_tail(job.log_path)}"}
            self._update(sid, dict(fields, end_time=time.time(), driver_exit_code=code))

    def stop_all(self, wait_s: float = STOP_GRACE_S) -> None:
        """The node is stopping: its jobs go with it (SIGTERM, then SIGKILL)."""
        for job in self.running.values():
            _signal_group(job.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while any(j.proc.poll() is None for j in self.running.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for job in self.running.values():
            _signal_group(job.proc.pid, signal.SIGKILL)
            job.proc.wait()
        self.running.clear()

    # ------------------------------------------------------ stop, logs: routed

    def on_stop(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, sid = msg
        self._route(sender, req_id, sid, msg, self._stop_here)

    def on_logs(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, sid, offset = msg
        self._route(sender, req_id, sid, msg, lambda record: self._logs_here(sid, offset))

    def _route(self, sender: str, req_id: int, sid: Any, msg: tuple, here: Callable[[dict], tuple]) -> None:
        """Answer with ``here(record)`` if the job ran on this node, else relay its node's answer."""
        if not isinstance(sid, str):
            self._reply(sender, req_id, ("error", "a submission id is a string"))
            return

        def found(status: str, record: Any) -> None:
            if status != "ok":
                self._reply(sender, req_id, ("error", f"the control store did not answer: {record}"))
            elif not isinstance(record, dict):
                self._reply(sender, req_id, ("error", f"no job has submission id {sid!r} (`mesh job list`)"))
            elif record.get("node_id") == self.node_id:
                self._reply(sender, req_id, here(record))
            else:
                self._forward(sender, req_id, record, msg)

        self.control().submit(("sub", sid), found, 10.0)

    def _forward(self, sender: str, req_id: int, record: dict, msg: tuple) -> None:
        node = record.get("node_id")
        view = self.peer_views().get(node)
        peer = view.address if view is not None and view.state in ("alive", "suspect") else None
        came_from_daemon = parse_address(sender)[1] == "daemon"
        if peer is None or came_from_daemon:  # never forwarded twice
            self._reply(sender, req_id, ("error", f"the node that ran job {record['submission_id']!r} ({node}) is "
                                                  "gone; its process and logs went with it"))
            return
        gone = ("error", f"the node that runs job {record['submission_id']!r} ({node}) did not answer")
        self.gathers.gather(sender, req_id, [(peer, Msg(msg[0]), *msg[2:])], [], FORWARD_TIMEOUT_S,
                            lambda parts: parts[0] if parts else gone)

    def _stop_here(self, record: dict) -> tuple:
        job = self.running.get(record["submission_id"])
        if job is None or record.get("status") not in ("PENDING", "RUNNING"):
            return ("ok", False)  # it ended already
        if job.stop_at is None:
            job.stop_at = time.monotonic() + STOP_GRACE_S
            _signal_group(job.proc.pid, signal.SIGTERM)
        return ("ok", True)

    def _logs_here(self, sid: str, offset: Any) -> tuple:
        if not isinstance(offset, int) or offset < 0:
            return ("error", "a log offset is a non-negative int")
        path = os.path.join(self.session_dir, "jobs", sid, "output.log")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(LOG_CHUNK_BYTES)
        except FileNotFoundError:
            data = b""  # not started yet, or it could not start (its record says why)
        return ("ok", {"data": data, "offset": offset + len(data)})


def _check_submission(sid: Any, entrypoint: Any, runtime_env: Any, metadata: Any, packages: int) -> str | None:
    if not isinstance(sid, str) or not SUBMISSION_ID.fullmatch(sid):
        return (f"a submission id is 1 to 128 letters, digits, '_', '.' or '-' (starting with a letter or digit), "
                f"got {sid!r}")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        return "the entrypoint is a non-empty shell command"
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        return "metadata maps str to str"
    if not isinstance(runtime_env, dict):
        return "a job's runtime_env travels as a dict"
    env_vars = runtime_env.get("env_vars") or {}
    if not (isinstance(env_vars, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())):
        return "runtime_env['env_vars'] maps str to str"
    modules = runtime_env.get("py_modules") or ()
    if not (isinstance(modules, (list, tuple)) and all(isinstance(m, tuple) and len(m) == 2 for m in modules)):
        return "runtime_env['py_modules'] travels as (name, package index) pairs"
    indexes = [runtime_env.get("working_dir")] + [i for _, i in modules]
    if any(i is not None and not (isinstance(i, int) and 0 <= i < packages) for i in indexes):
        return "a runtime_env package index names no frame of the message"
    return None


def _unpack(data: bytes, where: str) -> str:
    os.makedirs(where, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in z.namelist():
            target = os.path.realpath(os.path.join(where, name))
            if not target.startswith(os.path.realpath(where) + os.sep):
                raise ValueError(f"a package's file {name!r} lies outside its directory")
        z.extractall(where)
        for info in z.infolist():  # keep the files' modes (scripts stay executable)
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                os.chmod(os.path.join(where, info.filename), mode & 0o777)
    return where


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - MESSAGE_TAIL_CHARS))
            return f.read().decode(errors="replace").strip() or "(nothing)"
    except OSError:
        return "(no output)"


def _signal_group(pgid: int, sig: int) -> None:
    """Signal the process group the job's first process leads (it was started in a session of
    its own, so the group holds only the job's processes)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
