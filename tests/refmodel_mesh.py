"""Runs the programs of tests/refmodel.py on a live mesh and checks it against the model.

The runner (:class:`Runner`) applies each step to the mesh and to the model, and checks

* every read (recursive through nested refs) gives the value the model predicts;
* once the program is over and the mesh is quiet, the driver owns exactly the
  reachable objects it created, and the stores hold exactly the reachable large
  objects (one primary copy each);
* once every slot and actor state is cleared, nothing is left anywhere: no
  entry or local ref count in the driver or an actor, no object in any store,
  no borrow of an actor's handle.

The remote functions and the actor class live here (workers import this module).
"""

from __future__ import annotations

import gc
import itertools
import time
import traceback

import numpy as np

import meshcompute as mesh
from meshcompute import exceptions as exc
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .refmodel import (
    LARGE_SIZES,
    ActorCall,
    ActorPut,
    Collect,
    Copy,
    Drop,
    Give,
    Hold,
    Model,
    Pass,
    Put,
    Read,
    Restart,
    Settle,
    Task,
    TaskChild,
    TaskHold,
    TaskPut,
    TaskTwo,
    Unhold,
    Unwrap,
    epilogue,
    format_program,
)

TIMEOUT_S = 30.0  # one get; a hang shows up as a failure of its seed, with the program


# ----------------------------------------------------------------- values

def payload(tag: int, size: int):
    """Bytes derived from the tag; large even tags are numpy arrays (read zero-copy from the store)."""
    if size >= LARGE_SIZES[0] and tag % 2 == 0:
        return np.full(size, tag % 251, dtype=np.uint8)
    return bytes([tag % 251]) * size


def make(tag: int, size: int, refs: list, seen: tuple) -> tuple:
    return (tag, payload(tag, size), list(refs), tuple(seen))


def unpack(value) -> tuple:
    """A value's (tag, size, refs, seen), checking the payload matches the tag."""
    tag, data, refs, seen = value
    size = len(data)
    if size and (data[0] != tag % 251 or data[-1] != tag % 251 or data[size // 2] != tag % 251):
        raise AssertionError(f"payload of tag {tag} is corrupt")
    return tag, size, refs, seen


class TaskFailed(ValueError):
    pass


def _on(node_id: str):
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@mesh.remote
def build(spec, nested, *top):
    """A task: a value made of its arguments.  Top-level ref arguments arrive as values
    (their tags go to ``seen``, the refs inside them are passed on); ``nested`` stays refs."""
    return _build(spec, nested, top)


def _build(spec, nested, top):
    mode, tag, size, tag2, size2, split, child_node = spec
    tops = [unpack(v) for v in top]
    refs = list(nested) + [r for t in tops for r in t[2]]
    seen = tuple(t[0] for t in tops)
    if mode in ("read", "unwrap", "fail"):  # this worker reads the nested refs itself (blocking in get)
        values = [unpack(v) for v in mesh.get(list(nested), timeout=TIMEOUT_S)]
        seen += tuple(v[0] for v in values)
        if mode == "fail":  # with the values (and refs) of its arguments in its frames
            raise TaskFailed(f"task {tag} fails, as the program says")
        if mode == "unwrap":  # and returns the refs inside them (borrowed here) instead of them
            refs = [r for v in values for r in v[2]] + refs[len(nested):]
        mode = "value"
    if mode == "value":
        return make(tag, size, refs, seen)
    if mode == "put":  # an object owned by this worker, returned inside the result
        return make(tag, 16, [mesh.put(make(tag2, size2, refs, seen))], ())
    if mode == "two":
        return make(tag, size, refs[:split], seen), make(tag2, size2, refs[split:], ())
    if mode == "child":  # the result of a task this worker owns, still running when we return
        child = build.options(scheduling_strategy=_on(child_node)).remote(
            ("value", tag2, size2, 0, 0, 0, None), refs)
        return make(tag, 16, [child], ())
    raise ValueError(mode)


build_two = build.options(num_returns=2)


@mesh.remote
def hold_via(keeper, key, refs):
    """A task that has an actor keep refs it was passed, and waits until it does."""
    mesh.get(keeper.hold.remote(key, refs), timeout=TIMEOUT_S)


@mesh.remote
def build_padded(spec, nested, pad, *top):
    """``build`` with one more plain argument, which it checks and ignores."""
    assert pad == b"p" * len(pad)
    return _build(spec, nested, top)


@mesh.remote
class Keeper:
    """An actor that keeps refs (borrowed) under keys, gives them back, and owns puts."""

    def __init__(self):
        self.held = {}

    def hold(self, key, refs):
        self.held[key] = list(refs)

    def unhold(self, key):
        self.held.pop(key, None)

    def give(self, key, tag, read):
        refs = self.held.get(key, [])
        seen = tuple(unpack(v)[0] for v in mesh.get(refs, timeout=TIMEOUT_S)) if read else ()
        return make(tag, 16, refs, seen)

    def pass_to(self, other, key, other_key):
        """Have another actor keep what this one keeps under ``key``; wait until it does."""
        mesh.get(other.hold.remote(other_key, self.held.get(key, [])), timeout=TIMEOUT_S)

    def put(self, tag, tag2, size2, refs):
        return make(tag, 16, [mesh.put(make(tag2, size2, refs, ()))], ())

    def call(self, tag, size, *top):
        tops = [unpack(v) for v in top]
        return make(tag, size, [r for t in tops for r in t[2]], tuple(t[0] for t in tops))

    def clear(self):
        self.held.clear()
        gc.collect()

    def counts(self):
        """(entries, local ref counts) of this process's object table: 0, 0 once it holds nothing."""
        from meshcompute.owner import context

        objects = context.core.objects
        return len(objects.entries), len(objects.ref_counts)


# ----------------------------------------------------------------- runner

class Failure(AssertionError):
    """A check failed; ``kind`` says which ("read", "value", "identity", "settle", "leak", "error")."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class Runner:
    """Runs programs against a live mesh: the driver of this process, ``node_ids`` (the
    driver's node first), one Keeper actor per node, and ``store_records()`` (every
    node's store records, as LIST_OBJECTS answers them)."""

    def __init__(self, node_ids: list, store_records, n_slots: int = 5) -> None:
        from meshcompute.owner import context

        self.core = context.core
        self.node_ids = node_ids
        self.store_records = store_records
        self.n_slots = n_slots
        self.actors: list = []
        self.tokens: set[bytes] = set()
        self._start_actors()
        # Objects some earlier failed program left behind: reported there, not again.
        self.ignored: set[bytes] = set()
        self.patience = 10.0  # seconds the mesh gets to settle after a program (frees are asynchronous)

    # ---------------------------------------------------------------- one program

    def run(self, seed: int, program: list) -> None:
        """Run ``program`` and the epilogue; raise Failure (with the seed and the program) at the
        first mismatch.  Steps that name an empty slot (in a shortened program) are skipped."""
        model = Model(self.n_slots + 1, len(self.actors))
        self.slots: list = [None] * (self.n_slots + 1)
        self.hexes: dict[int, str] = {}  # object number -> object id, once a ref to it was seen
        steps, tail, at = list(program), [], None
        failure = None
        try:
            for i in itertools.count():
                if i == len(program):
                    tail = epilogue(model, self.n_slots)
                    steps += tail
                if i == len(steps):
                    break
                at, step = i, steps[i]
                if model.valid(step):
                    self._do(step, model)
                    model.apply(step)
                    self._note_new(step, model)
            at = None
            self._settle(model, final=True)
            self._clear()
        except Exception as e:
            kind = e.kind if isinstance(e, Failure) else "error"
            detail = e.args[0] if isinstance(e, Failure) else "".join(traceback.format_exception(e))
            where = "after the last step" if at is None else f"at step {at}"
            failure = Failure(f"{where}: {detail}\n{format_program(seed, program, at, tail)}", kind)
        finally:
            self.slots = []
        if failure is not None:
            # Out of the except block: its traceback (and the refs in its frames) is gone.
            self._recover()
            raise failure

    def _note_new(self, step, model: Model) -> None:
        for name in ("dst", "dst2"):
            d = getattr(step, name, None)
            if d is not None and self.slots[d] is not None:
                self._same(model.slots[d], self.slots[d].hex())

    def _same(self, number: int, hex_id: str) -> None:
        known = self.hexes.setdefault(number, hex_id)
        if known != hex_id:
            raise Failure(f"object #{number} is {known}, but a ref to it names {hex_id}", "identity")

    def _do(self, step, model: Model) -> None:
        s = self.slots
        kind = type(step)
        refs = [s[i] for i in getattr(step, "refs", ())]
        if kind is Put:
            s[step.dst] = mesh.put(make(step.tag, step.size, refs, ()))
        elif kind in (Task, TaskPut, TaskTwo):
            nested = [s[i] for i in step.nested]
            top = [s[i] for i in step.top]
            on = _on(self.node_ids[step.node])
            if kind is Task:
                spec = (("value", "read", "unwrap", "fail")[step.read], step.tag, step.size, 0, 0, 0, None)
                if step.pad:  # a plain argument: the driver stores a large one itself, for the task
                    s[step.dst] = build_padded.options(scheduling_strategy=on).remote(
                        spec, nested, b"p" * step.pad, *top)
                else:
                    s[step.dst] = build.options(scheduling_strategy=on).remote(spec, nested, *top)
            elif kind is TaskPut:
                spec = ("put", step.tag, 0, step.inner_tag, step.inner_size, 0, None)
                s[step.dst] = build.options(scheduling_strategy=on).remote(spec, nested, *top)
            else:
                spec = ("two", step.tag, step.size, step.tag2, step.size2, step.split, None)
                s[step.dst], s[step.dst2] = build_two.options(scheduling_strategy=on).remote(spec, nested, *top)
        elif kind is TaskChild:
            spec = ("child", step.tag, 0, step.inner_tag, step.inner_size, 0, self.node_ids[step.child_node])
            on = _on(self.node_ids[step.node])
            s[step.dst] = build.options(scheduling_strategy=on).remote(spec, [s[i] for i in step.nested])
        elif kind is Hold:
            self.actors[step.actor].hold.remote(step.key, refs)
        elif kind is TaskHold:
            self._barrier(step.actor)
            on = _on(self.node_ids[step.node])
            mesh.get(hold_via.options(scheduling_strategy=on).remote(self.actors[step.actor], step.key, refs),
                     timeout=TIMEOUT_S)
        elif kind is Pass:
            self._barrier(step.actor, step.other)
            mesh.get(self.actors[step.actor].pass_to.remote(self.actors[step.other], step.key, step.other_key),
                     timeout=TIMEOUT_S)
        elif kind is Unhold:
            self.actors[step.actor].unhold.remote(step.key)
        elif kind is Restart:
            self._restart(step.actor)
        elif kind is Give:
            s[step.dst] = self.actors[step.actor].give.remote(step.key, step.tag, step.read)
        elif kind is ActorPut:
            s[step.dst] = self.actors[step.actor].put.remote(step.tag, step.inner_tag, step.inner_size, refs)
        elif kind is ActorCall:
            s[step.dst] = self.actors[step.actor].call.remote(step.tag, step.size, *[s[i] for i in step.top])
        elif kind is Drop:
            s[step.slot] = None
        elif kind is Copy:
            s[step.dst] = s[step.src]
        elif kind is Unwrap:
            value = mesh.get(s[step.src], timeout=TIMEOUT_S)
            s[step.dst] = value[2][step.index]
            del value
        elif kind is Read:
            self._check(s[step.slot], model.slots[step.slot], model, set())
        elif kind is Collect:
            gc.collect()
        elif kind is Settle:
            self._settle(model, final=False)

    def _barrier(self, *actors: int) -> None:
        """Wait until the actors ran every call the driver made to them: a call from another
        process (a task's, an actor's) is ordered after them only then."""
        mesh.get([self.actors[a].counts.remote() for a in actors], timeout=TIMEOUT_S)

    def _check(self, ref, number: int, model: Model, done: set) -> None:
        """Read ``ref`` and every ref inside it; compare with object ``number`` of the model."""
        self._same(number, ref.hex())
        if number in done:
            return
        done.add(number)
        want = model.objs[number]
        try:
            tag, size, refs, seen = unpack(mesh.get(ref, timeout=TIMEOUT_S))
        except TaskFailed as e:
            if want.error and f"task {want.tag} fails" in str(e):
                return
            raise Failure(f"object #{number} ({want.owner}, {ref.hex()}) cannot be read: {e!r}", "read") from None
        except exc.OwnerDiedError:
            if number in model.dead:
                return
            raise Failure(f"object #{number} ({want.owner}, {ref.hex()}) is lost: its owner is alive", "read") \
                from None
        except Exception as e:
            raise Failure(f"object #{number} ({want.owner}, {ref.hex()}) cannot be read: {e!r}", "read") from None
        if want.error:
            raise Failure(f"object #{number} ({ref.hex()}) was read, but its task raised", "value")
        got = (tag, size, len(refs), seen)
        if got != (want.tag, want.size, len(want.children), want.seen):
            raise Failure(f"object #{number} ({ref.hex()}) is (tag, size, n_refs, seen) {got}, "
                          f"the model says {(want.tag, want.size, len(want.children), want.seen)}", "value")
        if number in model.dead:
            refs = []  # a copy read before its owner died: the objects inside may be gone
        for child_ref, child in zip(refs, want.children):
            self._check(child_ref, child, model, done)
        del refs

    # ---------------------------------------------------------------- quiet-state checks

    def _actual(self) -> dict:
        objects = self.core.objects
        entries = list(objects.entries.items())
        owned = {oid.hex() for oid, e in entries if e.owned and oid not in self.tokens}
        # Tasks and actors that were handed an actor handle borrow its token.
        borrowed_tokens = sorted(b for oid, e in entries if oid in self.tokens for b in e.borrowers)
        records = self.store_records()
        stored = {r["object_id"] for r in records if r["primary"] and not r["freed"]}
        ign = {i.hex() for i in self.ignored}
        # "anywhere": copies of other nodes' objects and freed blocks still mapped by readers too.
        return {"driver-owned": owned - ign, "stored": stored - ign,
                "anywhere": {r["object_id"] for r in records} - ign, "token borrowers": borrowed_tokens,
                "records": [r for r in records if r["object_id"] not in ign]}

    def _settle(self, model: Model, final: bool) -> None:
        """Wait until the driver owns exactly the reachable objects it made, and the stores hold
        exactly the reachable large ones.  Mid-program, objects never read have no known id:
        the stores are then compared by count, and the known ids must be among them."""
        reach = model.reachable()
        want_owned = {self.hexes[o] for o in reach if model.objs[o].owner == "driver"}
        large = [o for o in reach if model.objs[o].large and o not in model.dead]
        want_stored = {self.hexes[o] for o in large if o in self.hexes}
        if final and len(want_stored) != len(large):
            raise Failure("the epilogue did not read every reachable object", "error")

        def matches(now: dict) -> bool:
            return (now["driver-owned"] == want_owned and want_stored <= now["stored"]
                    and len(now["stored"]) == len(large))

        now = self._wait(matches)
        if not matches(now):
            names = {h: o for o, h in self.hexes.items()}

            def describe(ids: set) -> list:  # an id not seen yet: an object never read so far
                return sorted(f"#{names[i]}" if i in names else i[:16] for i in ids)

            raise Failure(
                "the mesh never settled on what the model keeps alive:\n"
                f"  driver owns, unreachable: {describe(now['driver-owned'] - want_owned)}\n"
                f"  reachable, driver lost it: {describe(want_owned - now['driver-owned'])}\n"
                f"  stored, unreachable: {describe(now['stored'] - want_stored)} "
                f"({len(now['stored'])} stored, {len(large)} reachable large objects)\n"
                f"  reachable, not stored: {describe(want_stored - now['stored'])}", "settle")

    def _wait(self, predicate):
        deadline = time.monotonic() + self.patience
        pause = 0.002
        while True:
            now = self._actual()
            if predicate(now) or time.monotonic() > deadline:
                return now
            time.sleep(pause)
            pause = min(0.05, pause * 2)

    def _clear(self) -> None:
        """Drop every slot and actor state; then nothing may be left anywhere."""
        self.slots = [None] * len(self.slots)
        mesh.get([a.clear.remote() for a in self.actors], timeout=TIMEOUT_S)
        gc.collect()
        now = self._wait(lambda n: not n["driver-owned"] and not n["anywhere"] and not n["token borrowers"])
        objects = self.core.objects

        def left_in_driver() -> set:
            return set(list(objects.entries) + list(objects.ref_counts)) - self.ignored - self.tokens

        left = left_in_driver()
        deadline = time.monotonic() + self.patience
        while left and time.monotonic() < deadline:
            time.sleep(0.01)
            left = left_in_driver()
        counts = [(0, 0)] * len(self.actors)
        while time.monotonic() < deadline:
            counts = mesh.get([a.counts.remote() for a in self.actors], timeout=TIMEOUT_S)
            if not any(n for c in counts for n in c):
                break
            time.sleep(0.01)
        names = {h: f"#{o}" for o, h in self.hexes.items()}
        problems = []
        if now["driver-owned"] or now["anywhere"] or left:
            problems.append(f"left in the driver: {sorted(names.get(i.hex(), i.hex()) for i in left)}, "
                            f"in the stores: {sorted(names.get(i, i) for i in now['anywhere'])}")
        if any(n for c in counts for n in c):
            problems.append(f"left in the actors (entries, ref counts): {counts}")
        if now["token borrowers"]:
            problems.append(f"the actors' handles are still borrowed by {now['token borrowers']}")
        for r in now["records"]:
            problems.append(f"store record of {names.get(r['object_id'], r['object_id'])}: " + ", ".join(
                f"{k}={r.get(k)}" for k in ("node_id", "owner", "primary", "sealed", "freed", "pins", "readers")))
        if problems:
            raise Failure("after every slot and actor state was dropped, " + "; ".join(problems), "leak")

    def _recover(self) -> None:
        """After a failure: drop everything and start over with new actors; ignore what stays
        (so that the next seed is judged on its own)."""
        self.slots = [None] * len(self.slots)
        gc.collect()
        old, self.actors = self.actors, []
        for a in old:
            mesh.kill(a)
        self._start_actors()
        time.sleep(0.5)
        objects = self.core.objects
        self.ignored |= set(objects.entries) | set(objects.ref_counts)
        self.ignored |= {bytes.fromhex(r["object_id"]) for r in self.store_records()}

    def _start_actors(self) -> None:
        """One Keeper per node.  Each handle holds a token object the driver owns (the actor
        stops when no ref to it is left anywhere): the runner's, not the programs'."""
        self.actors = [None] * len(self.node_ids)
        self.token_of: list[set] = [set() for _ in self.node_ids]
        self.tokens = set()
        for i in range(len(self.node_ids)):
            self._start_actor(i)

    def _start_actor(self, i: int) -> None:
        entries = self.core.objects.entries
        before = set(entries)
        self.actors[i] = Keeper.options(num_cpus=0, scheduling_strategy=_on(self.node_ids[i])).remote()
        mesh.get(self.actors[i].counts.remote(), timeout=60)
        self.token_of[i] = {oid for oid, e in list(entries.items()) if e.owned and oid not in before}
        self.tokens |= self.token_of[i]

    def _restart(self, i: int) -> None:
        # The driver's tasks and calls are done first: none fails with ActorDiedError or
        # reads an argument of the dead actor's (a value the driver inlined may hold refs
        # that only the dead actor kept alive).
        self._barrier(i)
        deadline = time.monotonic() + TIMEOUT_S
        while self.core.tasks.tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        mesh.kill(self.actors[i])
        self.actors[i] = None
        # Its token goes with its last handle (that was ours): from now on it counts among
        # the objects the driver must free.
        self.tokens -= self.token_of[i]
        self._start_actor(i)

    def close(self) -> None:
        for a in self.actors:
            mesh.kill(a)
        self.actors = []


# ----------------------------------------------------------------- minimizing

def minimize(runner: Runner, seed: int, program: list, kind: str, budget_s: float = 120.0) -> list:
    """A shorter program that still fails the same check (``kind``); steps whose slots are
    gone are skipped when it runs.  A failure that depends on timing may not shorten well."""
    deadline = time.monotonic() + budget_s

    def fails(p: list) -> bool:
        try:
            runner.run(seed, p)
        except Failure as e:
            return e.kind == kind
        return False

    n = 2
    while len(program) >= 2 and time.monotonic() < deadline:
        chunk = max(1, len(program) // n)
        for start in range(0, len(program), chunk):
            candidate = program[:start] + program[start + chunk:]
            if candidate and fails(candidate):
                program = candidate
                n = max(n - 1, 2)
                break
            if time.monotonic() > deadline:
                break
        else:
            if chunk == 1:
                break
            n = min(len(program), n * 2)
    return program
