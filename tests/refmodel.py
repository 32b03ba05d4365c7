"""Random programs over object refs, and a pure model of what they keep alive.

A program is a list of steps over a few *slots* (driver variables holding one
ObjectRef each).  A step stores a value (small and inline, or over 100 KiB and in
a node's store), possibly holding refs of other slots; runs a task or an actor
method that builds values out of its arguments (or raises); has an actor keep
refs, pass them to another actor and give them back later; kills and replaces an
actor; copies, unwraps, reads or drops a slot.  :class:`Model` says, for every
step, which objects exist, what their values are and which of them are reachable
from a live slot or an actor's state (through nesting).  tests/refmodel_mesh.py
runs programs on a real mesh and compares it with the model.

Steps are NamedTuples: a program prints one ``repr`` per line, and such a line
evaluates back to the step (``parse_program``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import NamedTuple

SMALL_SIZES = (0, 16, 3000)
LARGE_SIZES = (110_000, 260_000)  # payload bytes: the value pickles above the 100 KiB inline limit


# ----------------------------------------------------------------- steps

class Put(NamedTuple):
    dst: int
    tag: int
    size: int
    refs: tuple  # slots whose refs go inside the value


class Task(NamedTuple):
    dst: int
    node: int
    tag: int
    size: int
    top: tuple  # slots passed as top-level arguments (the task sees their values)
    nested: tuple  # slots passed inside a list (the task sees refs)
    pad: int  # bytes of a plain (non-ref) argument the task ignores; large ones are stored by the driver
    read: int  # 1: the task gets the nested refs' values (their tags go to ``seen``); 2: and returns
    #            the refs inside those values instead of the nested refs; 3: and then raises


class TaskPut(NamedTuple):
    dst: int
    node: int
    tag: int
    inner_tag: int
    inner_size: int
    top: tuple
    nested: tuple


class TaskTwo(NamedTuple):
    dst: int
    dst2: int
    node: int
    tag: int
    size: int
    tag2: int
    size2: int
    top: tuple
    nested: tuple
    split: int


class TaskChild(NamedTuple):
    dst: int
    node: int
    child_node: int
    tag: int
    inner_tag: int
    inner_size: int
    nested: tuple


class Hold(NamedTuple):
    actor: int
    key: int
    refs: tuple


class TaskHold(NamedTuple):
    """A task on ``node`` passes ``refs`` on to an actor to keep (the driver waits for it)."""
    node: int
    actor: int
    key: int
    refs: tuple


class Pass(NamedTuple):
    """Actor ``actor`` has actor ``other`` keep what it keeps under ``key`` (the driver waits)."""
    actor: int
    key: int
    other: int
    other_key: int


class Unhold(NamedTuple):
    actor: int
    key: int


class Give(NamedTuple):
    dst: int
    actor: int
    key: int
    tag: int
    read: bool  # the actor gets the values of the refs it gives (their tags go to ``seen``)


class ActorPut(NamedTuple):
    dst: int
    actor: int
    tag: int
    inner_tag: int
    inner_size: int
    refs: tuple


class ActorCall(NamedTuple):
    dst: int
    actor: int
    tag: int
    size: int
    top: tuple


class Restart(NamedTuple):
    """Kill actor ``actor`` and start a new one in its place: what it owned is lost (a read
    gives OwnerDiedError, or the value if the reader has it already), what it kept is let go."""
    actor: int


class Drop(NamedTuple):
    slot: int


class Copy(NamedTuple):
    dst: int
    src: int


class Unwrap(NamedTuple):
    dst: int
    src: int
    index: int


class Read(NamedTuple):
    slot: int


class Collect(NamedTuple):
    pass


class Settle(NamedTuple):
    """Wait for the mesh to be quiet and compare what the driver owns with the model."""


STEP_TYPES = (Put, Task, TaskPut, TaskTwo, TaskChild, Hold, TaskHold, Pass, Restart, Unhold, Give, ActorPut, ActorCall, Drop,
              Copy, Unwrap, Read, Collect, Settle)


def format_program(seed: int, program: list, failed_at: int | None = None, epilogue: list = ()) -> str:
    """One line per step, ``>>`` at the one that failed; then the epilogue the runner added."""
    lines = [f"seed {seed}, {len(program)} steps:"]
    for i, step in enumerate(list(program) + list(epilogue)):
        if i == len(program):
            lines.append(EPILOGUE)
        mark = ">>" if i == failed_at else "  "
        lines.append(f"{mark}{i:3d} {step!r}")
    return "\n".join(lines)


EPILOGUE = "then the runner's epilogue (reads everything still reachable):"


def parse_program(text: str) -> list:
    """Steps from the lines ``format_program`` printed (or one repr per line), epilogue left out."""
    names = {t.__name__: t for t in STEP_TYPES}
    out = []
    for line in text.splitlines():
        if line.strip() == EPILOGUE:
            break
        line = line.strip().lstrip(">").strip()
        head = line.split(" ", 1)
        if len(head) == 2 and head[0].isdigit():
            line = head[1]
        if line and line.split("(", 1)[0] in names:
            out.append(eval(line, {"__builtins__": {}}, names))  # noqa: S307 - our own reprs
    return out


# ----------------------------------------------------------------- model

@dataclass(frozen=True)
class Obj:
    tag: int
    size: int
    children: tuple  # object numbers, in the order of the value's refs
    seen: tuple
    owner: str  # "driver", "worker", "actor0" or "actor1"
    error: bool = False  # the task that makes it raises: reading it raises TaskFailed

    @property
    def large(self) -> bool:
        return self.size >= LARGE_SIZES[0]


@dataclass
class Model:
    """What a program has made, by object number, and what holds each object."""

    n_slots: int
    n_actors: int = 2
    objs: list = field(default_factory=list)  # object number -> Obj
    slots: list = field(default_factory=list)  # slot -> object number or None
    held: list = field(default_factory=list)  # actor -> {key: [object numbers]}
    dead: set = field(default_factory=set)  # objects whose owner was killed

    def __post_init__(self) -> None:
        self.slots = [None] * self.n_slots
        self.held = [{} for _ in range(self.n_actors)]

    def new(self, tag, size, children, seen, owner, error=False) -> int:
        self.objs.append(Obj(tag, size, tuple(children), tuple(seen), owner, error))
        return len(self.objs) - 1

    def live(self) -> list[int]:
        return [i for i, o in enumerate(self.slots) if o is not None]

    def reachable(self) -> set[int]:
        """Objects a live slot or an actor reaches (not through a dead object: its refs went with it)."""
        todo = [o for o in self.slots if o is not None]
        todo += [o for h in self.held for refs in h.values() for o in refs]
        seen: set[int] = set()
        while todo:
            o = todo.pop()
            if o not in seen:
                seen.add(o)
                if o not in self.dead:
                    todo.extend(self.objs[o].children)
        return seen

    def tainted(self, o: int) -> bool:
        """Whether object ``o`` is dead or an error, or reaches one (reading it all may fail)."""
        todo, seen = [o], set()
        while todo:
            o = todo.pop()
            if o in self.dead or self.objs[o].error:
                return True
            if o not in seen:
                seen.add(o)
                todo.extend(self.objs[o].children)
        return False

    def valid(self, step) -> bool:
        """Whether ``step`` names only live slots and held keys (a shortened program may not)."""
        uses = [s for name in ("refs", "top", "nested") for s in getattr(step, name, ())]
        if isinstance(step, (Drop, Read)):
            uses.append(step.slot)
        if isinstance(step, (Copy, Unwrap)):
            uses.append(step.src)
        if any(s >= self.n_slots or self.slots[s] is None for s in uses):
            return False
        # Only Read, Copy, Drop and actors' keeping use what reaches a dead object: a task
        # or an actor that read it would fail, which a program does not model.
        args = [s for name in ("refs", "top", "nested") for s in getattr(step, name, ())]
        if isinstance(step, Unwrap):
            args.append(step.src)
        if any(self.tainted(self.slots[s]) for s in args):
            return False
        if isinstance(step, Give) and step.read:
            if any(self.tainted(o) for o in self.held[step.actor].get(step.key, [])):
                return False
        if isinstance(step, Unwrap):
            return step.index < len(self.objs[self.slots[step.src]].children)
        return True

    def apply(self, step) -> None:
        s = self.slots
        kind = type(step)
        if kind is Put:
            s[step.dst] = self.new(step.tag, step.size, [s[i] for i in step.refs], (), "driver")
        elif kind in (Task, TaskPut, TaskTwo):
            tops = [self.objs[s[i]] for i in step.top]
            refs = [s[i] for i in step.nested] + [c for t in tops for c in t.children]
            seen = tuple(t.tag for t in tops)
            if kind is Task:
                if step.read:
                    seen += tuple(self.objs[s[i]].tag for i in step.nested)
                if step.read == 2:
                    refs = [c for i in step.nested for c in self.objs[s[i]].children] + refs[len(step.nested):]
                if step.read == 3:
                    s[step.dst] = self.new(step.tag, 0, (), (), "driver", error=True)
                else:
                    s[step.dst] = self.new(step.tag, step.size, refs, seen, "driver")
            elif kind is TaskPut:
                inner = self.new(step.inner_tag, step.inner_size, refs, seen, "worker")
                s[step.dst] = self.new(step.tag, 16, [inner], (), "driver")
            else:
                a = self.new(step.tag, step.size, refs[:step.split], seen, "driver")
                b = self.new(step.tag2, step.size2, refs[step.split:], (), "driver")
                s[step.dst], s[step.dst2] = a, b
        elif kind is TaskChild:
            inner = self.new(step.inner_tag, step.inner_size, [s[i] for i in step.nested], (), "worker")
            s[step.dst] = self.new(step.tag, 16, [inner], (), "driver")
        elif kind in (Hold, TaskHold):
            self.held[step.actor][step.key] = [s[i] for i in step.refs]
        elif kind is Pass:
            self.held[step.other][step.other_key] = list(self.held[step.actor].get(step.key, []))
        elif kind is Unhold:
            self.held[step.actor].pop(step.key, None)
        elif kind is Restart:
            self.held[step.actor] = {}
            self.dead |= {i for i, o in enumerate(self.objs) if o.owner == f"actor{step.actor}"}
        elif kind is Give:
            refs = self.held[step.actor].get(step.key, [])
            seen = tuple(self.objs[o].tag for o in refs) if step.read else ()
            s[step.dst] = self.new(step.tag, 16, refs, seen, "driver")
        elif kind is ActorPut:
            inner = self.new(step.inner_tag, step.inner_size, [s[i] for i in step.refs], (), f"actor{step.actor}")
            s[step.dst] = self.new(step.tag, 16, [inner], (), "driver")
        elif kind is ActorCall:
            tops = [self.objs[s[i]] for i in step.top]
            s[step.dst] = self.new(step.tag, step.size, [c for t in tops for c in t.children],
                                   tuple(t.tag for t in tops), "driver")
        elif kind is Drop:
            s[step.slot] = None
        elif kind is Copy:
            s[step.dst] = s[step.src]
        elif kind is Unwrap:
            s[step.dst] = self.objs[s[step.src]].children[step.index]


# ----------------------------------------------------------------- generator

def epilogue(model: Model, spare: int) -> list:
    """Steps that read everything reachable once, what the actors keep through what they give
    back into slot ``spare`` (a slot the program does not use)."""
    steps: list = [Read(i) for i in model.live()]
    tag = max((o.tag for o in model.objs), default=0)
    for a, held in enumerate(model.held):
        for key in sorted(held):
            tag += 1
            steps += [Give(spare, a, key, tag, False), Read(spare)]
    return steps + [Drop(spare)] if len(steps) > len(model.live()) else steps


def generate(seed: int, n_slots: int = 5, n_nodes: int = 2, n_actors: int = 2,
             min_steps: int = 8, max_steps: int = 28) -> list:
    """A random program over ``n_slots`` slots (the runner adds the epilogue)."""
    rng = random.Random(seed)
    model = Model(n_slots, n_actors)
    tags = iter(range(1, 1 << 30))
    program: list = []

    def size() -> int:
        return rng.choice(LARGE_SIZES) if rng.random() < 0.3 else rng.choice(SMALL_SIZES)

    def some(k: int) -> tuple:
        live = [i for i in model.live() if not model.tainted(model.slots[i])]
        if not live:
            return ()
        return tuple(rng.choice(live) for _ in range(rng.randint(0, k)))  # repeats allowed

    def dst() -> int:
        return rng.randrange(n_slots)

    kinds = (["put"] * 4 + ["task"] * 4 + ["task_put", "task_two", "task_child", "hold", "hold", "task_hold",
                                            "pass", "give", "give", "actor_put", "actor_call", "unhold", "copy",
                                            "unwrap", "unwrap", "read", "read", "drop", "drop", "drop",
                                            "collect", "settle", "restart"])
    for _ in range(rng.randint(min_steps, max_steps)):
        live = model.live()
        kind = rng.choice(kinds)
        node = rng.randrange(n_nodes)
        actor = rng.randrange(n_actors)
        if kind == "put":
            step = Put(dst(), next(tags), size(), some(3))
        elif kind == "task":
            step = Task(dst(), node, next(tags), size(), some(2), some(3),
                        rng.choice((0, 0, 0, 100, LARGE_SIZES[0])), rng.choice((0, 0, 0, 0, 0, 1, 2, 3)))
        elif kind == "task_put":
            step = TaskPut(dst(), node, next(tags), next(tags), size(), some(2), some(2))
        elif kind == "task_two":
            top, nested = some(2), some(3)
            n = len(nested) + sum(len(model.objs[model.slots[i]].children) for i in top)
            d = dst()
            step = TaskTwo(d, rng.choice([i for i in range(n_slots) if i != d]), node, next(tags), size(),
                           next(tags), size(), top, nested, rng.randint(0, n))
        elif kind == "task_child":
            step = TaskChild(dst(), node, rng.randrange(n_nodes), next(tags), next(tags), size(), some(3))
        elif kind == "hold":
            step = Hold(actor, rng.randrange(3), some(3))
        elif kind == "task_hold":
            step = TaskHold(node, actor, rng.randrange(3), some(3))
        elif kind == "pass" and any(model.held):
            a = rng.choice([i for i, h in enumerate(model.held) if h])
            other = rng.choice([i for i in range(n_actors) if i != a])  # an actor waiting on itself would hang
            step = Pass(a, rng.choice(sorted(model.held[a])), other, rng.randrange(3))
        elif kind == "unhold" and any(model.held):
            a = rng.choice([i for i, h in enumerate(model.held) if h])
            step = Unhold(a, rng.choice(sorted(model.held[a])))
        elif kind == "give" and any(model.held):
            a = rng.choice([i for i, h in enumerate(model.held) if h])
            step = Give(dst(), a, rng.choice(sorted(model.held[a])), next(tags), rng.random() < 0.3)
        elif kind == "actor_put":
            step = ActorPut(dst(), actor, next(tags), next(tags), size(), some(3))
        elif kind == "actor_call":
            step = ActorCall(dst(), actor, next(tags), size(), some(2))
        elif kind == "copy" and live:
            step = Copy(dst(), rng.choice(live))
        elif kind == "unwrap" and [i for i in live if model.objs[model.slots[i]].children]:
            src = rng.choice([i for i in live if model.objs[model.slots[i]].children])  # valid() drops dead ones
            step = Unwrap(dst(), src, rng.randrange(len(model.objs[model.slots[src]].children)))
        elif kind == "read" and live:
            step = Read(rng.choice(live))
        elif kind == "drop" and live:
            step = Drop(rng.choice(live))
        elif kind == "restart" and rng.random() < 0.5:
            step = Restart(actor)
        elif kind == "collect":
            step = Collect()
        elif kind == "settle":
            step = Settle()
        else:
            continue
        if model.valid(step):
            model.apply(step)
            program.append(step)
    return program
