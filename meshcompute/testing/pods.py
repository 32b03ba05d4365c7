"""A StatefulSet's pods, simulated on the network-namespace test bed (testing/netns.py).

Pod ``k`` (``<name>-k``) is host ``k + 1`` of the bed, running the image's command,
``mesh-node``, with the environment the manifests in deploy/kubernetes/ give it:
``HOSTNAME``, ``MESH_TOKEN``, ``MESH_HOST`` (the pod's address), ``MESH_PORT``,
``MESH_JOIN`` (the headless service: here the list of every pod's address, which is
what the service's name resolves to with ``publishNotReadyAddresses``), ``MESH_FOUNDER``
and ``MESH_METRICS_PORT``.  Each incarnation of a pod gets a fresh sessions directory,
as a new pod gets a fresh ``/tmp``.  What Kubernetes does is done the same way:

* readiness is the manifests' probe, ``mesh status --local --check``, run in the pod;
* deleting a pod sends SIGTERM and, after the grace period, SIGKILL;
* ``rolling_restart`` replaces pods from the highest ordinal down, each only once every
  pod is ready again (``OrderedReady``), as does scaling down; scaling up adds pods in
  order, each once the ones before are ready.

Used by tests/test_pod_lifecycle.py; it needs root (the test bed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .netns import TestBed

PORT = 7777


class Pods:
    """The pods of one simulated StatefulSet (and Job pods beside it) on a TestBed."""

    def __init__(self, bed: TestBed, token: str, name: str = "meshcompute", env: dict | None = None,
                 grace_s: float = 30.0) -> None:
        self.bed = bed
        self.token = token
        self.name = name
        self.extra = dict(env or {})
        self.grace_s = grace_s
        self.procs: dict[int, subprocess.Popen] = {}  # ordinal -> the running pod's mesh-node
        self.roots: dict[int, str] = {}  # ordinal -> its sessions directory (its /tmp)
        self.logs = tempfile.mkdtemp(prefix="mop-logs-")
        self.scratch = tempfile.mkdtemp(prefix="mop-scratch-")  # for the tests' files; removed by close()
        self.incarnation = 0

    def host(self, k: int) -> int:
        return k + 1

    def address(self, k: int) -> str:
        return self.bed.address(self.host(k))

    def env(self, k: int, **more: str) -> dict:
        service = ",".join(f"{self.bed.address(h)}:{PORT}" for h in self.bed.hosts)
        env = {key: v for key, v in os.environ.items() if not key.startswith("MESH_")}
        env.update(HOSTNAME=f"{self.name}-{k}", MESH_TOKEN=self.token, MESH_HOST=self.address(k),
                   MESH_PORT=str(PORT), MESH_JOIN=service, MESH_FOUNDER=f"{self.name}-0",
                   MESH_METRICS_PORT="9090", MESH_SESSIONS_ROOT=self.roots[k], COLUMNS="200")
        env.update(self.extra)
        env.update(more)
        return env

    # ------------------------------------------------------------------ pods

    def start(self, k: int) -> subprocess.Popen:
        """Create pod ``k`` (a fresh incarnation)."""
        assert k not in self.procs or self.procs[k].poll() is not None, f"pod {k} runs already"
        self.incarnation += 1
        root = tempfile.mkdtemp(prefix=f"mop{k}-")  # short: socket paths must fit
        os.chmod(root, 0o700)
        self.roots[k] = root
        log = open(os.path.join(self.logs, f"{self.name}-{k}.{self.incarnation}.log"), "w")
        proc = self.bed.spawn(self.host(k), [sys.executable, "-m", "meshcompute.host.container"],
                              env=self.env(k), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[k] = proc
        return proc

    def delete(self, k: int) -> int:
        """Delete pod ``k``: SIGTERM, SIGKILL after the grace period; returns the exit status."""
        proc = self.procs.pop(k)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        self._forget(k)
        return code

    def _forget(self, k: int) -> None:
        root = self.roots.pop(k, None)
        if root:
            # A pod's processes all die with it (a container's PID namespace): here, with the
            # command (parent-death signal); left-overs of a SIGKILL are cleaned like /tmp is.
            subprocess.run([sys.executable, "-m", "meshcompute.cli", "clean"], capture_output=True,
                           timeout=30, env=dict(os.environ, MESH_SESSIONS_ROOT=root))
            shutil.rmtree(root, ignore_errors=True)

    def ready(self, k: int) -> bool:
        """The readiness probe of pod ``k``."""
        if k not in self.procs or self.procs[k].poll() is not None:
            return False
        probe = [sys.executable, "-m", "meshcompute.cli", "status", "--local", "--check", "--timeout", "4"]
        r = self.bed.exec(self.host(k), probe, env=self.env(k), timeout=30)
        return r.returncode == 0

    def wait_ready(self, ks, timeout: float = 90.0) -> float:
        """Wait until every pod of ``ks`` is ready; returns the seconds it took."""
        t0 = time.monotonic()
        pending = list(ks)
        while pending:
            pending = [k for k in pending if not self.ready(k)]
            if pending:
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"pods {pending} not ready in {timeout} s; logs in {self.logs}")
                dead = [k for k in pending if self.procs[k].poll() is not None]
                if dead:
                    raise RuntimeError(f"pods {dead} exited ({[self.procs[k].returncode for k in dead]}); "
                                       f"logs in {self.logs}")
                time.sleep(1.0)
        return time.monotonic() - t0

    # ------------------------------------------------------------ controllers

    def rolling_restart(self, on_step=None) -> list[float]:
        """Replace every pod, highest ordinal first, one at a time (OrderedReady); returns how
        long each took to be ready again."""
        took = []
        for k in sorted(self.procs, reverse=True):
            code = self.delete(k)
            if code != 0:
                raise RuntimeError(f"pod {k} exited {code} on SIGTERM; logs in {self.logs}")
            self.start(k)
            took.append(self.wait_ready(list(self.procs)))
            if on_step is not None:
                on_step(k)
        return took

    def scale(self, n: int) -> None:
        """Scale to ``n`` pods the way a StatefulSet does (OrderedReady)."""
        while len(self.procs) < n:
            k = len(self.procs)
            self.start(k)
            self.wait_ready(list(self.procs))
        while len(self.procs) > n:
            k = max(self.procs)
            self.delete(k)
            self.wait_ready(list(self.procs))

    def mesh(self, k: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``mesh ARGS`` in pod ``k`` (kubectl exec)."""
        return self.bed.exec(self.host(k), [sys.executable, "-m", "meshcompute.cli", *args], env=self.env(k),
                             timeout=timeout)

    def job(self, host: int, command: list[str], **env: str) -> subprocess.Popen:
        """A Job's pod on bed host ``host`` (not one of the StatefulSet's): ``mesh-node COMMAND``
        on a node of no CPU."""
        root = tempfile.mkdtemp(prefix="mopj-")
        os.chmod(root, 0o700)
        service = ",".join(f"{self.bed.address(h)}:{PORT}" for h in self.bed.hosts)
        job_env = {key: v for key, v in os.environ.items() if not key.startswith("MESH_")}
        job_env.update(HOSTNAME=f"{self.name}-job", MESH_TOKEN=self.token, MESH_JOIN=service,
                       MESH_NUM_CPUS="0", MESH_SESSIONS_ROOT=root, MESH_OBJECT_STORE_MEMORY=str(128 << 20))
        job_env.update(env)
        self.roots[-host] = root
        out = open(os.path.join(self.logs, f"job-{host}.log"), "w")
        proc = self.bed.spawn(host, [sys.executable, "-m", "meshcompute.host.container", "--", *command],
                              env=job_env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return proc

    def log_text(self) -> str:
        parts = []
        for name in sorted(os.listdir(self.logs)):
            with open(os.path.join(self.logs, name), errors="replace") as f:
                parts.append(f"==> {name} <==\n{f.read()[-3000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        """Delete every pod (SIGKILL after 10 s) and remove what they left."""
        self.grace_s = min(self.grace_s, 10.0)
        for k in list(self.procs):
            try:
                self.delete(k)
            except Exception:  # noqa: BLE001 - the bed's teardown kills whatever is left
                pass
        for k in list(self.roots):
            self._forget(k)
        shutil.rmtree(self.logs, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
