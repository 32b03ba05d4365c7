"""A worker keeps every function definition it is sent, also with tasks it does not run.

An owner sends a function's definition with the first task of it it pushes to a
worker, and never again.  Was: when that task was handed back (the worker was
blocked in ``get``) or cancelled before it started, the definition went with it,
and the next task of that function failed with "function definition missing on
worker" (found by tests/test_refcount_model.py).  No process or socket here: the
executor runs on this thread with a fake core.
"""

from __future__ import annotations

import signal
import types

import pytest

from meshcompute.wire import ids
from meshcompute.wire.messages import Msg
from meshcompute.wire.serialization import deserialize, dumps_function
from meshcompute.worker.executor import Executor
from meshcompute.worker.inbox import WorkerInbox

OWNER = "n1/p_owner@"


def forty_two():
    return 42


class FakeCore:
    address, node_id = "n1/p_worker@", "n1"
    current_task_id = None
    gpu_ids = ()
    output = None

    def __init__(self) -> None:
        self.done: list = []
        self.tasks = types.SimpleNamespace(job_id="")

    def put_serialized(self, ser, owner=None, object_id=None):
        return ("v", ser)

    def send_done(self, owner, result, frames, handoff):
        self.done.append((result, frames))


class FakeIo:
    address = FakeCore.address

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, peer, msg_type, *fields, frames=()):
        self.sent.append((peer, msg_type, fields))


@pytest.fixture
def executor():
    handler = signal.getsignal(signal.SIGINT)  # the executor takes SIGINT (cancelling a running task)
    try:
        yield Executor(FakeCore())
    finally:
        signal.signal(signal.SIGINT, handler)


def _spec(with_definition: bool) -> tuple:
    fn_bytes = dumps_function(forty_two)
    task_id = ids.new_task_id()
    return (task_id, b"forty-two-fn", fn_bytes if with_definition else None, "forty_two", [], (), 1,
            [ids.object_id(task_id, 1)])


def _run_and_read(executor: Executor, spec: tuple):
    executor._run_task(OWNER, (), spec, [], "job")
    (task_id, returns, _), frames = executor.core.done[-1]
    assert task_id == spec[0]
    kind, meta, nbuf, is_error, _contained = returns[0]
    value = deserialize(meta, frames[:nbuf])
    return value, is_error


def test_a_definition_handed_back_with_queued_tasks_is_kept(executor):
    first = _spec(with_definition=True)
    executor.queue.put(("task", OWNER, (), first, [], "job", ()))
    assert executor.take_queued_tasks() == {OWNER: [first[0]]}  # the worker blocked: handed back
    assert _run_and_read(executor, _spec(with_definition=False)) == (42, False)


def test_a_definition_bounced_on_arrival_is_kept(executor):
    io = FakeIo()
    inbox = WorkerInbox(io, executor, lambda *a: None, blocked=lambda: True, activity=lambda: None)
    first = _spec(with_definition=True)
    inbox.on_push_tasks(OWNER, (Msg.PUSH_TASKS, b"lease", (), [first], "job", ()), [])
    assert io.sent == [(OWNER, Msg.TASKS_BOUNCED, ([first[0]],))]
    assert executor.queue.empty()
    assert _run_and_read(executor, _spec(with_definition=False)) == (42, False)


def test_a_definition_sent_with_a_cancelled_task_is_kept(executor):
    first = _spec(with_definition=True)
    executor.cancel(first[0])
    value, is_error = _run_and_read(executor, first)
    assert is_error and type(value).__name__ == "TaskCancelledError"
    assert _run_and_read(executor, _spec(with_definition=False)) == (42, False)
