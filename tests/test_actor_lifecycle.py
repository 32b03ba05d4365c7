"""Ray's actor lifecycle extras: async constructors, exit_actor(), cancelling async calls."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import meshcompute as mesh
from meshcompute import exceptions

from .conftest import pid_alive, wait_for

pytestmark = pytest.mark.timeout(60)


def test_a_ref_nested_in_a_constructor_argument_lives_until_the_actor_reads_it(fresh_node):
    # First in this module: a node of its own, whose first worker is still being forked
    # while the driver drops its only ref to the value.
    @mesh.remote
    class Slow:
        def __init__(self, refs):
            self.v = mesh.get(refs[0])

        def value(self):
            return self.v

    a = Slow.remote([mesh.put(41)])  # not inside the assert: pytest would keep the list alive
    assert mesh.get(a.value.remote(), timeout=30) == 41


def test_async_init_runs_on_the_actors_loop_before_any_call(node):
    @mesh.remote
    class Loaded:
        async def __init__(self, x, refs):
            await asyncio.sleep(0.2)
            self.x = x + await refs[0]  # a ref nested in an argument, awaited
            self.loop = id(asyncio.get_running_loop())

        async def value(self):
            return self.x, self.loop == id(asyncio.get_running_loop())

    a = Loaded.remote(1, [mesh.put(41)])
    assert mesh.get(a.value.remote(), timeout=30) == (42, True)


def test_a_failing_async_init_fails_the_calls(node):
    @mesh.remote
    class Broken:
        async def __init__(self):
            raise ValueError("no config")

        async def value(self):
            return 1

    with pytest.raises(exceptions.ActorDiedError, match="no config"):
        mesh.get(Broken.remote().value.remote(), timeout=30)


@mesh.remote(max_concurrency=2)
class Sleeper:
    def __init__(self):
        self.cleaned_up = 0

    async def nap(self, seconds):
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cleaned_up += 1
            raise
        return "woke"

    async def stubborn(self):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "swallowed"  # cancelled all the same: its ref raises TaskCancelledError

    async def cleanups(self):
        return self.cleaned_up


def test_cancel_cancels_a_running_async_call_and_the_actor_serves_on(node):
    s = Sleeper.remote()
    assert mesh.get(s.cleanups.remote(), timeout=30) == 0
    running, other = s.nap.remote(30), s.nap.remote(0.5)
    time.sleep(0.3)
    start = time.monotonic()
    mesh.cancel(running)
    with pytest.raises(exceptions.TaskCancelledError):
        mesh.get(running, timeout=10)
    assert time.monotonic() - start < 5
    assert mesh.get(other, timeout=10) == "woke"  # the call beside it ran on
    assert mesh.get(s.cleanups.remote(), timeout=10) == 1  # the coroutine saw CancelledError


def test_cancel_reaches_calls_waiting_for_the_actors_concurrency_and_stubborn_ones(node):
    s = Sleeper.remote()
    busy = [s.stubborn.remote(), s.nap.remote(30)]  # max_concurrency=2: both slots taken
    waiting = s.nap.remote(0)
    time.sleep(0.3)
    for ref in (waiting, *busy):
        mesh.cancel(ref)
    for ref in (waiting, *busy):
        with pytest.raises(exceptions.TaskCancelledError):
            mesh.get(ref, timeout=10)
    assert mesh.get(s.nap.remote(0), timeout=10) == "woke"


@mesh.remote(max_restarts=3)
class Quitter:
    def __init__(self, marker=None):
        self.marker = marker
        if marker:
            import atexit

            atexit.register(lambda: open(marker, "w").write("atexit ran"))

    def pid(self):
        return os.getpid()

    def quit(self):
        mesh.actor.exit_actor()
        return "not reached"

    def swallow(self):
        try:
            mesh.actor.exit_actor()
        except Exception:  # exit_actor() is not an Exception: this does not stop it
            return "swallowed"


def test_exit_actor_ends_the_actor_for_good(node, tmp_path):
    marker = tmp_path / "atexit"
    q = Quitter.remote(str(marker))
    pid = mesh.get(q.pid.remote(), timeout=30)
    quit_ref = q.quit.remote()
    with pytest.raises(exceptions.ActorDiedError, match="exit_actor"):
        mesh.get(quit_ref, timeout=30)
    with pytest.raises(exceptions.ActorDiedError, match="exit_actor"):  # not restarted, max_restarts or not
        mesh.get(q.pid.remote(), timeout=30)
    assert wait_for(lambda: not pid_alive(pid), timeout=10)
    assert marker.read_text() == "atexit ran"
    with pytest.raises(exceptions.ActorDiedError):
        mesh.get(Quitter.remote().swallow.remote(), timeout=30)


def test_exit_actor_fails_calls_not_started_and_lets_running_ones_finish(node):
    @mesh.remote(max_concurrency=4)
    class Busy:
        def slow(self):
            time.sleep(1)
            return "finished"

        def quit(self):
            mesh.actor.exit_actor()

    b = Busy.remote()
    slow = b.slow.remote()
    time.sleep(0.3)
    quit_ref = b.quit.remote()
    after = b.slow.remote()
    assert mesh.get(slow, timeout=30) == "finished"
    for ref in (quit_ref, after):
        with pytest.raises(exceptions.ActorDiedError):
            mesh.get(ref, timeout=30)


def test_exit_actor_in_an_async_actor_and_outside_actors(node):
    @mesh.remote
    class AsyncQuitter:
        async def quit(self):
            await asyncio.sleep(0)
            mesh.actor.exit_actor()

        async def ping(self):
            return "pong"

    a = AsyncQuitter.remote()
    assert mesh.get(a.ping.remote(), timeout=30) == "pong"
    with pytest.raises(exceptions.ActorDiedError, match="exit_actor"):
        mesh.get(a.quit.remote(), timeout=30)
    with pytest.raises(exceptions.ActorDiedError, match="exit_actor"):
        mesh.get(a.ping.remote(), timeout=30)
    with pytest.raises(TypeError, match="inside an actor"):
        mesh.actor.exit_actor()
    with pytest.raises(TypeError, match="inside an actor"):
        mesh.get(mesh.remote(mesh.actor.exit_actor).remote(), timeout=30)
