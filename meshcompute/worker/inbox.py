"""The worker side of a process's I/O thread: tasks in, results out.

Owners push task batches (PUSH_TASKS) and actor calls (ACTOR_CALL) here; the
executor thread runs them and hands results back, which go to each owner in one
TASKS_DONE per loop turn.  A result for this very process (a child run inline
by a task blocked in ``get``) is applied directly: no message at all.
Everything here runs on the I/O thread unless a docstring says otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..observe.output import OUTPUT_FLUSH_S
from ..sched.pipeline import SHORT_TASK_S
from ..wire import ids
from ..wire.messages import Msg

PIPELINE_PATIENCE_S = 10 * SHORT_TASK_S
"""Seconds a task may run while pushed tasks wait behind it on this worker.

Owners put a task behind a running one only when its function is known to run
under 15 ms (sched.pipeline.MEDIUM_TASK_S); one that runs this long turned long,
and the tasks behind it go back to their owners (TASKS_BOUNCED), who give them
to another worker instead of letting them wait."""


class WorkerInbox:
    def __init__(self, io: Any, executor: Any, apply_own_results: Callable[[tuple, list], None],
                 blocked: Callable[[], bool], activity: Callable[[], None]) -> None:
        self.io = io  # OwnerIo: send, address
        self.executor = executor
        self._apply_own = apply_own_results  # TaskQueues.on_tasks_done for results we own
        self._blocked = blocked  # is the executor waiting in get/wait?
        self._activity = activity  # task activity: arm the stats timer
        self.output: Any = None  # the OutputShipper (observe/output.py)
        self.done_out: dict[str, list] = {}  # owner -> [(result, frames)] to flush this turn
        self.handoff: dict[bytes, list] = {}  # task id -> refs kept until the owner holds them
        self.out_last = 0.0
        self._check_armed = False  # a pipeline check is pending (_check_pipeline)

    def handlers(self) -> dict:
        return {
            Msg.PUSH_TASKS: self.on_push_tasks,
            Msg.ACTOR_CALL: self.on_actor_call,
            Msg.CANCEL_TASK: self.on_cancel_task,
            Msg.BECOME_ACTOR: self.on_become_actor,
            Msg.RELEASE_HANDOFF: self.on_release_handoff,
            Msg.TIMELINE: self.on_timeline,
            Msg.STREAM_CONSUMED: lambda sender, msg, frames: self.executor.stream_consumed(msg[1], int(msg[2])),
        }

    def on_push_tasks(self, sender: str, msg: tuple, frames: list) -> None:
        _, lease_id, gpu_ids, specs, job_id, shape = msg  # job: the owner's, for its tasks
        job_id = job_id if isinstance(job_id, str) else ""
        ex = self.executor
        self._activity()
        if self._blocked() and ex.bounce_enabled:
            for spec in specs:
                ex.keep_fn(spec)
            self.io.send(sender, Msg.TASKS_BOUNCED, [s[0] for s in specs])
            return
        pos = 0
        for spec in specs:
            n = sum(a[2] for a in spec[4] if a[0] == "v")
            ex.queue.put(("task", sender, gpu_ids, spec, frames[pos: pos + n], job_id, shape))
            pos += n
        self._watch_pipeline()

    def _watch_pipeline(self) -> None:
        # One check armed at a time, for the task running now, while tasks wait behind it.
        running = self.executor.running_task()
        if running is not None and not self._check_armed and self.executor.bounce_enabled:
            self._check_armed = True
            self.io.call_later(PIPELINE_PATIENCE_S, self._check_pipeline, running)

    def _check_pipeline(self, running: bytes) -> None:
        """Tasks wait behind one that has run for PIPELINE_PATIENCE_S: hand them back."""
        self._check_armed = False
        if self.executor.queue.empty():
            return
        if self.executor.running_task() == running and not self._blocked():
            back = self.executor.take_queued_tasks()
            if back:
                self.bounce(back)
        else:
            self._watch_pipeline()  # another task runs now: watch it in turn

    def on_actor_call(self, sender: str, msg: tuple, frames: list) -> None:
        self._activity()
        self.executor.submit_call(sender, msg[1], frames)

    def on_cancel_task(self, sender: str, msg: tuple, frames: list) -> None:
        self.executor.cancel(msg[1])

    def on_become_actor(self, sender: str, msg: tuple, frames: list) -> None:
        self.executor.queue.put(("actor", msg[1], msg[2], msg[3], frames, tuple(msg[4])))

    def on_release_handoff(self, sender: str, msg: tuple, frames: list) -> None:
        self.handoff.pop(msg[1], None)

    def on_timeline(self, sender: str, msg: tuple, frames: list) -> None:
        self.io.send(sender, Msg.REPLY, msg[1], self.executor.timeline_lane())

    # ------------------------------------------------------------- results

    def done(self, owner: str, result: tuple, frames: list, handoff: list | None) -> None:
        if owner == self.io.address:
            # Our own child, run inline: the owner state is right here. Its refs
            # are held by the entries it fills, so no handoff is needed.
            self._apply_own((Msg.TASKS_DONE, [result]), frames)
            return
        if handoff:
            self.handoff[result[0]] = handoff
        batch = self.done_out.get(owner)
        if batch is None:
            self.done_out[owner] = [(result, frames)]
        else:
            batch.append((result, frames))

    def stream_item(self, owner: str, task_id: bytes, index: int, fields: tuple, frames: list,
                    handoff: list) -> None:
        """A generator task yielded: the value goes to its owner now, ahead of the task's end."""
        if handoff:  # refs inside it are held until the owner holds them (keyed by the item's id)
            self.handoff[ids.object_id(task_id, index + 1)] = handoff
        self.io.send(owner, Msg.STREAM_ITEM, task_id, index, fields, frames=frames)

    def flush_if_any(self) -> None:
        if self.done_out:
            self.flush()

    def flush(self) -> None:
        """Send this turn's results, one TASKS_DONE per owner (after the lines they printed)."""
        output = self.output
        if output is not None and output.ready:
            # Lines first, whatever the interval since the last batch: on the same pipe they
            # reach the driver before the results, so what a failing task printed is shown
            # before its error (a driver that exits on that error would lose it otherwise).
            # Still one WORKER_OUTPUT per turn at most, never one per line.
            self.flush_output()
        self._activity()
        out, self.done_out = self.done_out, {}
        for owner, items in out.items():
            results = [r for r, _ in items]
            frames = [f for _, fs in items for f in fs]
            self.io.send(owner, Msg.TASKS_DONE, results, frames=frames)

    def bounce(self, owner_tasks: dict[str, list[bytes]]) -> None:
        for owner, tids in owner_tasks.items():
            self.io.send(owner, Msg.TASKS_BOUNCED, tids)

    # ------------------------------------------------------------- output

    def arm_output(self) -> None:
        """The first line of a batch is waiting: ship it within OUTPUT_FLUSH_S."""
        delay = max(0.0, self.out_last + OUTPUT_FLUSH_S - time.monotonic())
        self.io.call_later(delay, self.flush_output)

    def flush_output(self) -> None:
        if self.output is None:
            return
        self.out_last = time.monotonic()
        for sink, lines in self.output.take().items():
            if sink == self.io.address:
                self.forward_output(lines)
            else:
                self.io.send(sink, Msg.WORKER_OUTPUT, lines)

    def forward_output(self, lines: list) -> None:
        """Lines a task of ours printed (or a child's worker shipped to us): on to our sink."""
        sink = self.executor.log_sink()
        if sink and sink != self.io.address:
            self.io.send(sink, Msg.WORKER_OUTPUT, lines)
