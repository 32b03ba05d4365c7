"""The engine under ``Pool``, ``MeshExecutor`` and the joblib backend: a fixed set of
actors fed chunks of work by one dispatcher thread.

Actors rather than tasks, as Ray's ``Pool`` does: an initializer runs once per process
and what it sets up stays there, which is what ``multiprocessing`` code expects.

Work arrives as *chunks* (a function and a list of items). The engine learns what an
item of each function costs from the chunks run so far, and then:

* packs queued chunks into one call until it holds about ``TARGET_CALL_S`` of work,
  so a ``map`` over 100k small items costs a handful of calls, while slow items still
  go out one call each and spread evenly;
* sends a second call to a busy actor only when the work is known to be quick (the
  round trip would show), so a slow chunk never waits at one actor while another is
  idle -- the rule the runtime applies to tasks (docs/architecture.md).

Chunks wait here, not at the actors, so a queued chunk can still be cancelled.

Threads: callers submit from any thread; one dispatcher thread sends calls and
takes results; one callback thread runs completions (user callbacks, future
results), so a callback that submits more work, as joblib's does, never waits on
the dispatcher that called it.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from .. import exceptions as exc
from ..api.remote import ActorHandle, make_remote
from ..api.session import cluster_resources, get, kill, nodes
from ..owner import context
from ..owner.objects import Waiter
from ._chunks import DONE, ONE, QUEUED, SENT, STAR, Chunk, Failure
from .scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger("meshcompute")

DEPTH = 2
"""Calls in flight per actor when the work is quick: one running and one waiting there, so
the actor never idles for a round trip."""

TARGET_CALL_S = 0.05
"""Work packed into one call once the cost of an item is known: small enough that the
last calls end close together, large enough that the per-call cost stays under 1%."""

MAX_ITEMS_PER_CALL = 50_000
MAX_CHUNKS_PER_CALL = 4_096
COSTS_KEPT = 256
"""Functions whose item cost is remembered (joblib makes a new callable per batch)."""

def _run_chunk(func: Callable, mode: str, items: list) -> list:
    out = []
    for item in items:
        try:
            if mode == ONE:
                out.append(func(item))
            elif mode == STAR:
                out.append(func(*item))
            else:
                out.append(func(*item[0], **item[1]))
        except Exception as e:  # each item fails on its own, as in multiprocessing
            out.append(Failure.capture(e))
    return out


class PoolWorker:
    """The actor: runs the initializer once, then chunks of work."""

    def __init__(self, initializer: Callable | None, initargs: tuple) -> None:
        self._module: str | None = None
        self._globals: dict | None = None
        self._set: dict = {}
        if initializer is None:
            return
        g = getattr(initializer, "__globals__", None)
        before = dict(g) if g is not None else {}
        initializer(*initargs)
        if g is not None:
            # Functions pickled by value (those of __main__) each arrive with their own copy of
            # their module's globals, so what an initializer sets with `global` would not reach
            # them; under fork it would. Keep what it set and hand it to them (_share_globals).
            self._module, self._globals = getattr(initializer, "__module__", None), g
            self._set = {k: v for k, v in g.items() if k not in before or before[k] is not v}

    def _share_globals(self, func: Callable) -> None:
        g = getattr(func, "__globals__", None)
        if self._set and g is not None and g is not self._globals \
                and getattr(func, "__module__", None) == self._module:
            g.update(self._set)

    def ready(self) -> int:
        return os.getpid()

    def run(self, work: list) -> list[tuple[list, float]]:
        """Each chunk's outcomes, and the seconds it took."""
        out = []
        for func, mode, items in work:
            self._share_globals(func)
            start = time.perf_counter()
            values = _run_chunk(func, mode, items)
            out.append((values, time.perf_counter() - start))
        return out


class _Slot:
    __slots__ = ("actor", "home", "in_flight", "chunks", "retiring", "gen")

    def __init__(self, actor: ActorHandle, home: str | None) -> None:
        self.actor = actor
        self.home = home  # the node its actors are placed on (None: wherever the node decides)
        self.in_flight = 0
        self.chunks = 0
        self.retiring = False
        self.gen = 0


class _Call:
    __slots__ = ("ref", "slot", "gen", "chunks", "items")

    def __init__(self, ref: Any, slot: _Slot, chunks: list[Chunk], items: int) -> None:
        self.ref = ref
        self.slot = slot
        self.gen = slot.gen
        self.chunks = chunks
        self.items = items


class _Fire:
    """Stands in for a Waiter's event: the I/O thread "sets" it when the object is ready,
    which queues the call for the dispatcher -- no thread per call waits for it."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn

    def set(self) -> None:
        self._fn()

    def is_set(self) -> bool:
        return False


def _when_ready(core: Any, ref: Any, fn: Callable[[], None]) -> None:
    w = Waiter(1)
    w.event = _Fire(fn)
    core.post(core.objects.watch, [(ref._id, ref._owner)], w)


_STOP = object()
_IDLE = object()  # a second passed without events: time to check that the mesh is still there
RUNNING, CLOSED, TERMINATED = "running", "closed", "terminated"


PLACEMENT_OPTIONS = {"scheduling_strategy", "num_cpus", "num_gpus", "resources", "memory",
                     "placement_group", "accelerator_type", "label_selector"}
"""Actor options that place the processes; without them the engine spreads them itself."""


def spread(processes: int) -> list[str | None]:
    """A node for each process, in proportion to the CPUs of the live nodes (ties: this node
    first), interleaved. The processes hold no CPU, so a node would otherwise place them all
    on itself: a pool sized to the whole mesh would crowd one node while the others idle."""
    cpus = {n["NodeID"]: n["Resources"].get("CPU", 0.0) for n in nodes() if n["Alive"]}
    cpus = {node: c for node, c in cpus.items() if c > 0}
    if len(cpus) < 2:
        return [None] * processes
    here = context.core.node_id
    total = sum(cpus.values())
    share = {node: processes * c / total for node, c in cpus.items()}
    counts = {node: int(q) for node, q in share.items()}
    by_remainder = sorted(share, key=lambda node: (counts[node] - share[node], node != here, node))
    for node in by_remainder[:processes - sum(counts.values())]:
        counts[node] += 1
    order = sorted(counts, key=lambda node: (node != here, node))
    homes: list[str | None] = []
    while len(homes) < processes:
        for node in order:
            if counts[node]:
                homes.append(node)
                counts[node] -= 1
    return homes


def check_processes(processes: int | None, remote_args: dict, what: str) -> int:
    """The number of actors, defaulting to the mesh's CPUs; a clear error if they cannot all be placed."""
    cpus = int(cluster_resources().get("CPU", 0))
    if processes is None:
        processes = max(1, cpus)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"{what} must be a positive int, got {processes!r}")
    per = float(remote_args.get("num_cpus") or 0)
    if per and processes * per > cpus:
        raise ValueError(f"{processes} {what} of num_cpus={per:g} need {processes * per:g} CPUs, "
                         f"but the mesh has {cpus}")
    return processes


class Engine:
    """``processes`` actors running chunks; see the module docstring."""

    def __init__(self, processes: int, initializer: Callable | None = None, initargs: tuple = (),
                 max_chunks_per_worker: int | None = None, remote_args: dict | None = None) -> None:
        self._cls = make_remote(PoolWorker, dict(remote_args or {}))
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_chunks = max_chunks_per_worker
        self._core = context.core
        self._lock = threading.Lock()
        self._queue: collections.deque[Chunk] = collections.deque()
        self._open = 0  # chunks submitted and not done
        self._feeders = 0  # threads still reading input for this engine (imap)
        self.state = RUNNING
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._costs: collections.OrderedDict[int, list] = collections.OrderedDict()  # id(func) -> [func, s/item]
        self._calls: dict[bytes, _Call] = {}  # in flight, by result id (dispatcher thread only)
        self._kicked = False  # a wake-up for submitted chunks is on its way to the dispatcher
        homes = spread(processes) if not PLACEMENT_OPTIONS & set(remote_args or {}) else [None] * processes
        self._slots = [_Slot(self._new_actor(home), home) for home in homes]
        self._stopped = threading.Event()
        try:
            get([s.actor.ready.remote() for s in self._slots])
        except BaseException:
            self._kill_all()
            raise
        self._callbacks: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run_callbacks, name="meshcompute-pool-callbacks", daemon=True).start()
        self._thread = threading.Thread(target=self._run, name="meshcompute-pool", daemon=True)
        self._thread.start()

    @property
    def processes(self) -> int:
        return len(self._slots)

    def _new_actor(self, home: str | None) -> ActorHandle:
        cls = self._cls
        if home is not None:  # soft: a node that died or filled up does not stop the pool
            cls = cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(home, soft=True))
        return cls.remote(self._initializer, self._initargs)

    # ------------------------------------------------------------ callers' side

    def submit(self, chunks: list[Chunk], from_feeder: bool = False) -> None:
        """Queue chunks (any thread); ValueError once the engine is closed (an input
        reader started before ``close()`` may go on until it is terminated)."""
        with self._lock:
            if self.state == TERMINATED or (self.state == CLOSED and not from_feeder):
                raise ValueError("Pool not running")
            self._queue.extend(chunks)
            self._open += len(chunks)
            kick, self._kicked = not self._kicked, True
        if kick:  # one wake-up per batch of submissions, not one per chunk
            self._events.put(None)

    def cancel(self, chunk: Chunk) -> bool:
        """Take back a chunk not yet sent; True if it will not run."""
        with self._lock:
            if chunk.state != QUEUED:
                return False
            chunk.state = DONE
            self._chunk_closed()
        return True

    def cancel_queued(self) -> None:
        """Cancel every chunk not yet sent; each sink hears ``CancelledError``."""
        with self._lock:
            dropped = [c for c in self._queue if c.state == QUEUED]
            self._queue.clear()
            for c in dropped:
                c.state = DONE
                self._chunk_closed()
        for c in dropped:
            self._deliver(c, None, CancelledError())

    def call_soon(self, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` on the callback thread, in order."""
        self._callbacks.put((fn, args))

    def add_feeder(self) -> None:
        with self._lock:
            if self.state != RUNNING:
                raise ValueError("Pool not running")
            self._feeders += 1

    def remove_feeder(self) -> None:
        with self._lock:
            self._feeders -= 1
        self._events.put(None)  # the dispatcher may be done now

    def cost(self, func: Callable) -> float | None:
        """Seconds an item of ``func`` took so far (smoothed), or None if none ran yet."""
        known = self._costs.get(id(func))
        return known[1] if known is not None and known[0] is func else None

    def _learn(self, func: Callable, items: int, seconds: float) -> None:
        per = seconds / items
        known = self._costs.get(id(func))
        if known is not None and known[0] is func:
            known[1] = 0.7 * known[1] + 0.3 * per
            self._costs.move_to_end(id(func))
            return
        self._costs[id(func)] = [func, per]  # holding func keeps its id from being reused meanwhile
        if len(self._costs) > COSTS_KEPT:
            self._costs.popitem(last=False)

    def items_per_call(self, func: Callable) -> int:
        """How many items of ``func`` one call should carry."""
        per = self.cost(func)
        if per is None:
            return 1
        return max(1, min(MAX_ITEMS_PER_CALL, int(TARGET_CALL_S / max(per, 1e-7))))

    def close(self) -> None:
        """Accept no more work; the actors stop once what was submitted is done."""
        with self._lock:
            if self.state == RUNNING:
                self.state = CLOSED
        self._events.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until a closed engine finished its work and stopped its actors."""
        if self.state == RUNNING:
            raise ValueError("Pool is still running")
        return self._stopped.wait(timeout)

    def terminate(self, error: BaseException | None = None) -> None:
        """Stop now: unfinished work fails with ``error``, the actors are killed."""
        with self._lock:
            if self.state == TERMINATED:
                return
            self.state = TERMINATED
            queued = [c for c in self._queue if c.state == QUEUED]
            self._queue.clear()
        error = error or RuntimeError("the pool was terminated before this work finished")
        for c in queued:
            self._finish(c, None, error)
        self._events.put(_STOP)

    # -------------------------------------------------------- dispatcher thread

    def _run(self) -> None:
        try:
            while True:
                try:
                    ev = self._events.get(timeout=1.0)
                except queue.Empty:
                    ev = _IDLE
                if context.core is not self._core and ev is not _STOP:
                    # shut down: fail what is left, and call nothing (any call would init() anew)
                    self.terminate(exc.MeshError("meshcompute was shut down while the pool had work"))
                    continue
                if ev is _IDLE:
                    continue
                while True:  # take every event waiting before sending more
                    if ev is _STOP:
                        self._wind_down()
                        return
                    if isinstance(ev, _Call):
                        self._complete(ev)
                    try:
                        ev = self._events.get_nowait()
                    except queue.Empty:
                        break
                self._pump()
                if self._drained():
                    self._wind_down()
                    return
        except BaseException:  # a bug here must not leave callers waiting forever
            log.exception("the pool's dispatcher failed")
            self.terminate(exc.MeshError("the pool's dispatcher failed; see the log"))
            self._wind_down()

    def _drained(self) -> bool:
        with self._lock:
            return self.state == CLOSED and self._open == 0 and self._feeders == 0

    def _wind_down(self) -> None:
        calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            for c in call.chunks:
                self._finish(c, None, RuntimeError("the pool was terminated before this work finished"))
        self._kill_all()
        self._callbacks.put(_STOP)  # the callback thread sets _stopped once the completions queued are run

    def _kill_all(self) -> None:
        if context.core is not self._core:  # shut down: the actors went with it (and kill() would init again)
            return
        for slot in self._slots:
            try:
                kill(slot.actor)
            except Exception:  # already gone, or the mesh is shut down
                pass

    def _head(self) -> Chunk | None:
        """The first chunk still queued (lock held)."""
        q = self._queue
        while q and q[0].state != QUEUED:
            q.popleft()
        return q[0] if q else None

    def _quick(self, chunk: Chunk) -> bool:
        per = self.cost(chunk.func)
        return per is not None and per * len(chunk.items) < TARGET_CALL_S

    def _take(self, slot: _Slot) -> list[Chunk]:
        """Chunks for one call to ``slot``: about TARGET_CALL_S of work (lock held)."""
        room = MAX_CHUNKS_PER_CALL
        if self._max_chunks is not None:
            room = min(room, self._max_chunks - slot.chunks)
        taken: list[Chunk] = []
        spent = 0.0
        items = 0
        while len(taken) < room and (c := self._head()) is not None:
            per = self.cost(c.func)
            if taken and (per is None or spent + per * len(c.items) > TARGET_CALL_S
                          or items + len(c.items) > MAX_ITEMS_PER_CALL):
                break
            self._queue.popleft()
            c.state = SENT
            taken.append(c)
            items += len(c.items)
            spent += TARGET_CALL_S if per is None else per * len(c.items)
        return taken

    def _next_slot(self) -> _Slot | None:
        """An idle actor, else a busy one with room when the next chunk is quick (lock held)."""
        live = [s for s in self._slots if not s.retiring]
        idle = [s for s in live if s.in_flight == 0]
        if idle:
            return idle[0]
        head = self._head()
        if head is None or not self._quick(head):
            return None
        busy = [s for s in live if s.in_flight < DEPTH]
        return min(busy, key=lambda s: s.in_flight) if busy else None

    def _pump(self) -> None:
        if self.state == TERMINATED:
            return
        while True:
            with self._lock:
                self._kicked = False  # what is submitted from now on wakes the dispatcher again
                slot = self._next_slot()
                work = self._take(slot) if slot is not None else []
            if not work:
                return
            for c in work:
                c.sink.chunk_sent(c)
            try:
                ref = slot.actor.run.remote([(c.func, c.mode, c.items) for c in work])
            except BaseException as e:  # e.g. a function that cannot be pickled
                for c in work:
                    self._finish(c, None, e)
                continue
            call = _Call(ref, slot, work, sum(len(c.items) for c in work))
            self._calls[ref._id] = call
            slot.in_flight += 1
            slot.chunks += len(work)
            if self._max_chunks is not None and slot.chunks >= self._max_chunks:
                slot.retiring = True
            _when_ready(self._core, ref, lambda call=call: self._events.put(call))

    def _complete(self, call: _Call) -> None:
        self._calls.pop(call.ref._id, None)
        slot = call.slot
        if call.gen != slot.gen:
            return  # an earlier actor of this slot: its chunks were failed already
        slot.in_flight -= 1
        try:
            results = self._core.get([call.ref])[0]  # ready: no wait (and never an init())
        except exc.ActorDiedError as e:
            self._actor_died(slot, call, e)
            return
        except BaseException as e:  # e.g. a result that could not be pickled
            self._finish_all([(c, None, e) for c in call.chunks])
        else:
            spent: dict[int, list] = {}  # id(func) -> [func, items, seconds]: one update per function
            for c, (_, seconds) in zip(call.chunks, results):
                acc = spent.setdefault(id(c.func), [c.func, 0, 0.0])
                acc[1] += len(c.items)
                acc[2] += seconds
            for func, items, seconds in spent.values():
                if items:
                    self._learn(func, items, seconds)
            self._finish_all([(c, values, None) for c, (values, _) in zip(call.chunks, results)])
        if slot.retiring and slot.in_flight == 0 and self.state != TERMINATED:
            self._replace(slot)

    def _actor_died(self, slot: _Slot, call: _Call, error: BaseException) -> None:
        """Fail what the dead actor held (its other calls will fail too) and start another
        in its place: failing is what a caller can act on, where multiprocessing hangs."""
        lost = [call] + [c for c in self._calls.values() if c.slot is slot and c.gen == slot.gen]
        for lost_call in lost:
            self._calls.pop(lost_call.ref._id, None)
            for c in lost_call.chunks:
                self._finish(c, None, error)
        if self.state != TERMINATED:
            self._replace(slot)

    def _replace(self, slot: _Slot) -> None:
        if context.core is not self._core:
            return
        try:
            kill(slot.actor)
        except Exception:  # already dead
            pass
        slot.actor = self._new_actor(slot.home)
        slot.gen += 1
        slot.in_flight = 0
        slot.chunks = 0
        slot.retiring = False

    def _finish(self, chunk: Chunk, values: list | None, error: BaseException | None) -> None:
        self._finish_all([(chunk, values, error)])

    def _finish_all(self, outcomes: list[tuple[Chunk, list | None, BaseException | None]]) -> None:
        with self._lock:
            fresh = [o for o in outcomes if o[0].state != DONE]
            for chunk, _, _ in fresh:
                chunk.state = DONE
                self._chunk_closed()
        for chunk, values, error in fresh:
            self._deliver(chunk, values, error)

    def _chunk_closed(self) -> None:
        """(lock held)"""
        self._open -= 1
        if self._open == 0:  # the dispatcher may be done now
            self._events.put(None)

    def _deliver(self, chunk: Chunk, values: list | None, error: BaseException | None) -> None:
        try:
            chunk.sink.chunk_done(chunk, values, error)
        except Exception:  # a sink's bug must not stop the dispatcher
            log.exception("delivering a pool result failed")

    # --------------------------------------------------------- callback thread

    def _run_callbacks(self) -> None:
        while True:
            item = self._callbacks.get()
            if item is _STOP:
                self._stopped.set()
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # as in multiprocessing: a failing callback is reported, not fatal
                log.exception("a pool callback raised")
