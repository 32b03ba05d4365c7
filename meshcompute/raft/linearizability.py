"""A linearizability checker (Wing & Gong search with Lowe's memoization, as in Porcupine).

A history is a list of :class:`Operation`: each has an invocation time and, if
the client saw an answer, a response time and output. The history is
linearizable if every operation can be assigned an instant between its call
and its return such that executing the operations sequentially in that order
on the sequential ``Model`` produces exactly the observed outputs.

Operations whose outcome the client never learned (it timed out, the server
crashed) have ``ret=None``: they may take effect at any point after their call,
or never (they can be placed after everything else), and their output is
unconstrained.

The search (Wing & Gong 1993; memoization by Lowe 2017; the linked-list
formulation of Porcupine) walks the time-ordered list of call and return
events. At a call it tries to linearize that operation now; at a return of an
operation not yet linearized it backtracks. The cache of (set of linearized
operations, model state) pairs already explored makes the search fast on
real histories: two paths reaching the same set and state have the same future.
Histories are first split by ``Model.partition`` (P-compositionality: for a
key-value store each key is checked on its own), which keeps each search small.

Pure and dependency-free so that real-daemon tests can reuse it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "UNKNOWN",
    "Operation",
    "Model",
    "CheckResult",
    "KVModel",
    "check_operations",
]


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


# Output of an operation whose response was never observed.
UNKNOWN: Any = _Unknown()

_INF = float("inf")


@dataclass(frozen=True)
class Operation:
    client_id: int
    input: Any
    # Invocation time (any totally ordered clock: virtual ticks, event counter, ns).
    call: float
    output: Any = UNKNOWN
    # Response time, or None if the client never saw a response.
    ret: float | None = None

    def describe(self) -> str:
        r = "..." if self.ret is None else f"{self.ret}"
        return f"client {self.client_id} [{self.call}, {r}] {self.input!r} -> {self.output!r}"


class Model(Protocol):
    """A sequential specification."""

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        """Split into independent sub-histories (or return [list(history)])."""
        ...

    def init(self) -> Hashable: ...

    def step(self, state: Hashable, input: Any, output: Any) -> tuple[bool, Hashable]:
        """Apply ``input`` to ``state``; (output is consistent, new state). ``output`` may be UNKNOWN."""
        ...


@dataclass
class CheckResult:
    # True: linearizable; False: not; None: gave up (step budget exhausted).
    ok: bool | None
    # For a failure, the sub-history (partition) that could not be linearized.
    failed_partition: list[Operation] | None = None
    # Search steps taken, over all partitions.
    steps: int = 0
    # For a failure: most operations linearized on any path of the search.
    best_prefix: int = 0

    def describe(self) -> str:
        if self.ok:
            return f"linearizable ({self.steps} search steps)"
        if self.ok is None:
            return f"unknown: gave up after {self.steps} search steps"
        ops = "\n".join("  " + op.describe() for op in self.failed_partition or [])
        return (
            f"NOT linearizable: at most {self.best_prefix} of {len(self.failed_partition or [])} "
            f"operations could be linearized in this sub-history:\n{ops}"
        )


class KVModel:
    """Sequential key-value register map.

    Inputs are tuples: ``("put", key, value)`` -> output None;
    ``("get", key, None)`` -> output the value or None; ``("cas", key, (old,
    new))`` -> output True (and value becomes new) iff the value was ``old``.
    """

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        by_key: dict[Any, list[Operation]] = {}
        for op in history:
            by_key.setdefault(op.input[1], []).append(op)
        return [by_key[k] for k in sorted(by_key, key=repr)]

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, input: Any, output: Any) -> tuple[bool, Hashable]:
        kind, _key, arg = input
        if kind == "put":
            return True, arg
        if kind == "get":
            return (output is UNKNOWN or output == state), state
        if kind == "cas":
            old, new = arg
            if state == old:
                return (output is UNKNOWN or output is True), new
            return (output is UNKNOWN or output is False), state
        raise ValueError(f"unknown KV operation {kind!r}")


def _check_single(model: Model, ops: list[Operation], budget: int) -> tuple[bool | None, int, int]:
    """Returns (ok, steps, best prefix) for one partition."""
    n = len(ops)
    if n == 0:
        return True, 0, 0
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        ret = _INF if op.ret is None else op.ret
        if ret < op.call:
            raise ValueError(f"operation returns before it is called: {op.describe()}")
        # At equal times a return sorts before a call: the earlier operation
        # finished before the later one started.
        events.append((op.call, 1, i))
        events.append((ret, 0, i))
    events.sort()
    m = len(events)
    is_call = [ev[1] == 1 for ev in events]
    op_of = [ev[2] for ev in events]
    ret_node = [0] * n
    for pos, ev in enumerate(events):
        if ev[1] == 0:
            ret_node[ev[2]] = pos
    head = m
    nxt = list(range(1, m + 1)) + [0]
    nxt[m - 1] = -1
    prv = [head] + list(range(0, m - 1)) + [-1]

    def lift(c: int) -> None:
        r = ret_node[op_of[c]]
        nxt[prv[c]] = nxt[c]
        if nxt[c] != -1:
            prv[nxt[c]] = prv[c]
        nxt[prv[r]] = nxt[r]
        if nxt[r] != -1:
            prv[nxt[r]] = prv[r]

    def unlift(c: int) -> None:
        r = ret_node[op_of[c]]
        nxt[prv[r]] = r
        if nxt[r] != -1:
            prv[nxt[r]] = r
        nxt[prv[c]] = c
        if nxt[c] != -1:
            prv[nxt[c]] = c

    state = model.init()
    linearized = 0
    depth = best = 0
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[int, Hashable]] = []
    entry = nxt[head]
    steps = 0
    while entry != -1:
        steps += 1
        if steps > budget:
            return None, steps, best
        if is_call[entry]:
            i = op_of[entry]
            op = ops[i]
            ok, new_state = model.step(state, op.input, op.output if op.ret is not None else UNKNOWN)
            if ok:
                new_lin = linearized | (1 << i)
                key = (new_lin, new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized = new_lin
                    depth += 1
                    best = max(best, depth)
                    lift(entry)
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:
            # The return of an operation we could not linearize before it: undo
            # the most recent choice and try the next candidate after it.
            if not stack:
                return False, steps, best
            c, state = stack.pop()
            linearized &= ~(1 << op_of[c])
            depth -= 1
            unlift(c)
            entry = nxt[c]
    return True, steps, best


def check_operations(model: Model, history: Sequence[Operation], budget: int = 5_000_000) -> CheckResult:
    """Is ``history`` linearizable with respect to ``model``?

    ``budget`` bounds the search steps over all partitions; if it runs out the
    result is ``ok=None`` (inconclusive) rather than a wrong answer.
    """
    total = 0
    for part in model.partition(history):
        ok, steps, best = _check_single(model, part, budget - total)
        total += steps
        if ok is None:
            return CheckResult(None, part, total, best)
        if not ok:
            return CheckResult(False, part, total, best)
    return CheckResult(True, None, total)
