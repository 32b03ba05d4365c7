"""Resource shapes and a node's resource pool.

A *shape* is what one task, actor or lease asks for: ``(("CPU", 1.0), ("GPU", 0.5))``,
sorted by name, without zero amounts, so that equal requests compare and hash
equal. Names are free-form: ``CPU``, ``GPU``, ``memory``, custom resources,
``node:<id>`` markers (hard node affinity) and placement group bundle names
(see ``bundles``).

Invariants of a ``ResourcePool``:

* ``available[k] <= total[k]`` for every name, except for a moment after a
  blocked worker takes its CPU back (``reclaim_cpu``): CPU may then go below
  zero, and new work waits until enough has been released.
* ``gpu_free[g]`` is in ``[0, 1]``: the unused fraction of device ``g``.
  Amounts say how much GPU is free, ``gpu_free`` says on which devices; GPUs
  set aside in a bundle leave the amount but not the devices, so a request
  must pass both checks (``fits``) and takes devices when granted.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

from .bundles import MARKER_UNITS, bundle_keys, gpu_amount, is_public

__all__ = ["EPSILON", "Shape", "normalize_shape", "fits", "feasible", "pick_gpus", "ResourcePool"]

Shape = tuple[tuple[str, float], ...]

# Amounts are floats that are added and subtracted many times (0.1 + 0.2 ...):
# comparisons allow this much noise so a request for exactly what is left fits.
EPSILON = 1e-9


def normalize_shape(resources: Mapping[str, float] | Iterable[tuple[str, float]]) -> Shape:
    """The canonical shape of a request: sorted by name, zero amounts dropped.

    Accepts a mapping or the wire form (a sequence of ``(name, amount)`` pairs).
    Raises ``ValueError`` for anything a well-behaved client never sends: a name
    that is not a string, an amount that is not a finite number >= 0, a name
    given twice. These arrive from peers; a negative amount once *raised* a
    node's free CPU when its request was granted.
    """
    try:
        pairs = list(resources.items()) if isinstance(resources, Mapping) else list(resources)
    except TypeError:
        raise ValueError(f"a resource request must be a mapping of name to amount, not {resources!r}") from None
    out: dict[str, float] = {}
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"a resource request entry must be a (name, amount) pair, not {pair!r}")
        name, amount = pair
        if not isinstance(name, str):
            raise ValueError(f"a resource name must be a string, not {name!r}")
        # bool is an int in Python, but {"CPU": True} is a bug, not a request.
        if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
            raise ValueError(f"the amount of {name!r} must be a number, not {amount!r}")
        amount = float(amount)
        if not math.isfinite(amount):
            raise ValueError(f"the amount of {name!r} must be finite, not {amount!r}")
        if amount < 0:
            raise ValueError(f"the amount of {name!r} must not be negative, not {amount!r}")
        if name in out:
            raise ValueError(f"the resource {name!r} is given twice")
        out[name] = amount
    return tuple(sorted((k, v) for k, v in out.items() if v > 0))


def fits(shape: Shape, pool: Mapping[str, float]) -> bool:
    """Whether ``pool`` (free amounts) holds every amount the shape asks for."""
    return all(pool.get(k, 0.0) + EPSILON >= v for k, v in shape)


def feasible(shape: Shape, total: Mapping[str, float]) -> bool:
    """Whether a node with these ``total`` resources could ever run the shape.

    A ``node:<id>`` marker counts like any resource: only that node has it.
    """
    return fits(shape, total)


def pick_gpus(gpu_free: Mapping[int, float], amount: float) -> tuple[int, ...] | None:
    """Which GPU ids a request for ``amount`` GPUs gets, or None when none fit.

    One or more GPUs take whole, completely free devices (lowest ids first);
    a fraction shares the lowest-numbered device with enough left, so that
    fractional work packs onto few devices and leaves whole ones free.
    """
    if amount >= 1:
        n = int(round(amount))
        free = [g for g, f in sorted(gpu_free.items()) if f >= 1.0 - EPSILON]
        return tuple(free[:n]) if len(free) >= n else None
    for g, f in sorted(gpu_free.items()):
        if f + EPSILON >= amount:
            return (g,)
    return None


class ResourcePool:
    """One node's resources: what it has (``total``) and what is free (``available``).

    ``total`` includes the node's ``node:<id>`` marker and reserved placement
    group bundles; ``public_total``/``public_available`` are what the node
    shows to others.
    """

    def __init__(self, total: Mapping[str, float], gpu_count: int) -> None:
        self.total: dict[str, float] = {k: float(v) for k, v in total.items()}
        self.available: dict[str, float] = dict(self.total)
        self.gpu_free: dict[int, float] = {i: 1.0 for i in range(int(gpu_count))}

    # ------------------------------------------------------------ questions

    def fits(self, shape: Shape, pool: Mapping[str, float] | None = None) -> bool:
        """Whether the shape can be granted now: amounts and actual GPU devices.

        ``pool`` replaces ``available`` for the amounts (a scheduler pass checks
        against what is left after the grants it already decided).
        """
        if not fits(shape, self.available if pool is None else pool):
            return False
        gpus = gpu_amount(shape)
        # The GPU amount may fit while no single device has room (0.5 + 0.5 on two devices).
        return not gpus or pick_gpus(self.gpu_free, gpus) is not None

    def feasible(self, shape: Shape) -> bool:
        """Whether the shape could run here once everything is released."""
        return feasible(shape, self.total)

    def public_total(self) -> dict[str, float]:
        """Total resources without the node marker and placement group bundles."""
        return {k: v for k, v in self.total.items() if is_public(k)}

    def public_available(self) -> dict[str, float]:
        """Free resources outside bundles, never negative (what gossip shows, what bundles go into)."""
        return {k: max(0.0, v) for k, v in self.available.items() if is_public(k)}

    def largest(self) -> dict[str, float]:
        """What the biggest request this node could run may ask for (for 'infeasible' messages)."""
        return {k: v for k, v in self.total.items() if not k.startswith("node:")}

    # -------------------------------------------------------------- changes

    def acquire(self, shape: Shape) -> tuple[int, ...]:
        """Take the shape's resources; returns the GPU ids it gets. Call only when ``fits``."""
        for k, v in shape:
            self.available[k] = self.available.get(k, 0.0) - v
        gpus = gpu_amount(shape)
        if not gpus:
            return ()
        chosen = pick_gpus(self.gpu_free, gpus) or ()
        for g in chosen:
            # A whole device is taken whole (no float crumbs left on it).
            self.gpu_free[g] = 0.0 if gpus >= 1 else self.gpu_free[g] - gpus
        return chosen

    def release(self, shape: Shape, gpu_ids: Iterable[int], lent_cpu: float = 0.0) -> None:
        """Give back what ``acquire`` took.

        ``lent_cpu``: CPU the worker lent while blocked (``lend_cpu``) and has not
        taken back; it was already given back then, so it is not given twice.
        """
        for k, v in shape:
            # A placement group bundle may be gone meanwhile: its names must not come back.
            if k in self.total:
                self.available[k] = self.available.get(k, 0.0) + v
        self.available["CPU"] = self.available.get("CPU", 0.0) - lent_cpu
        gpus = gpu_amount(shape)
        share = 1.0 if gpus >= 1 else gpus
        for g in gpu_ids:
            if g in self.gpu_free:
                self.gpu_free[g] = min(1.0, self.gpu_free[g] + share)

    def lend_cpu(self, amount: float) -> None:
        """A worker blocks (waits on get()): its CPU may run other work meanwhile."""
        self.available["CPU"] = self.available.get("CPU", 0.0) + amount

    def reclaim_cpu(self, amount: float) -> None:
        """The blocked worker runs again and takes its CPU back.

        Free CPU may go below zero for a while: the unblocked task must run now,
        and new grants wait until enough is released.
        """
        self.available["CPU"] = self.available.get("CPU", 0.0) - amount

    def add(self, name: str, amount: float) -> None:
        """A new resource (a reserved bundle's name) appears, all of it free."""
        self.total[name] = self.total.get(name, 0.0) + amount
        self.available[name] = self.available.get(name, 0.0) + amount

    def remove(self, name: str, amount: float | None = None) -> None:
        """``amount`` of a resource disappears (None: all of it).

        The name goes away once nothing is left, so ``release`` of work that
        used it does not bring it back.
        """
        for table in (self.total, self.available):
            left = 0.0 if amount is None else table.get(name, 0.0) - amount
            if left <= EPSILON:
                table.pop(name, None)
            else:
                table[name] = left

    def reserve_bundle(self, pg_id: str, index: int, bundle: Mapping[str, float]) -> None:
        """Set ``bundle`` aside as bundle ``index`` of group ``pg_id``.

        Its amounts leave the public pool and reappear under the bundle's names,
        plus ``MARKER_UNITS`` of the bundle marker, for work that asks for nothing.
        """
        for k, v in bundle.items():
            self.available[k] = self.available.get(k, 0.0) - v
        for k, v in [*bundle.items(), ("bundle", MARKER_UNITS)]:
            for name in bundle_keys(pg_id, index, k):
                self.add(name, v)

    def return_bundle(self, pg_id: str, index: int, bundle: Mapping[str, float], last_here: bool) -> None:
        """Undo ``reserve_bundle``. ``last_here``: no other bundle of the group stays on this node,
        so the group-wide names go entirely (float noise must not leave a sliver of them)."""
        for k, v in [*bundle.items(), ("bundle", MARKER_UNITS)]:
            one, whole = bundle_keys(pg_id, index, k)
            self.remove(one, v)
            self.remove(whole, None if last_here else v)
        for k, v in bundle.items():
            self.available[k] = self.available.get(k, 0.0) + v
