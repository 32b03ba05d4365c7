"""The node's resource arithmetic: what it has, what is free, which GPUs are taken.

One small object, no I/O and no messages, so that the lease and actor code
only ask questions (``fits``, ``feasible``) and make transactions (``acquire``,
``release``, lending a blocked worker's CPU) without touching the dicts.
"""

from __future__ import annotations

from ..sched.bundles import MARKER_UNITS, bundle_keys, gpu_amount, is_public

EPS = 1e-9
"""Slack for float comparisons (fractional CPUs and GPUs add up inexactly)."""


class ResourcePool:
    """Owns ``total``, ``available`` and the per-GPU free fractions of one node.

    Invariants:
      * ``total`` holds the node's resources, its ``node:<id>`` marker and the
        resources of the placement group bundles reserved here (under their
        bundle names: sched/bundles.py);
      * ``available[k]`` is ``total[k]`` minus what leases, actors and bundles
        hold, plus the CPU lent out by blocked workers.  It may go below zero
        for a moment when a blocked worker takes its CPU back (new grants then
        wait until it is back above their shape);
      * a GPU id is handed out whole (shapes of 1 GPU or more) or in fractions
        of one device (shapes below 1), never both at once beyond 1.0.
    """

    def __init__(self, total: dict[str, float], num_gpus: int) -> None:
        self.total: dict[str, float] = dict(total)
        self.available: dict[str, float] = dict(total)
        self.gpu_free: dict[int, float] = {i: 1.0 for i in range(int(num_gpus))}

    # --------------------------------------------------------------- questions

    def fits(self, shape: tuple, pool: dict | None = None) -> bool:
        """Whether ``shape`` fits what is free (or ``pool``, a scratch copy of it) now."""
        pool = self.available if pool is None else pool
        for k, v in shape:
            if pool.get(k, 0.0) + EPS < v:
                return False
        gpus = gpu_amount(shape)
        if gpus and not self._pick_gpus(gpus, dry=True):
            return False
        return True

    def feasible(self, shape: tuple) -> bool:
        """Whether ``shape`` could ever fit this node (when nothing else runs)."""
        return all(self.total.get(k, 0.0) + EPS >= v for k, v in shape)

    def free_copy(self) -> dict[str, float]:
        """A scratch copy of what is free, for a scheduling pass to count down."""
        return dict(self.available)

    def public_total(self) -> dict:
        """Total resources, without the node: marker and placement group bundles."""
        return {k: v for k, v in self.total.items() if is_public(k)}

    def public_available(self) -> dict:
        """Free resources outside placement group bundles (what gossip shows, what bundles go into)."""
        return {k: max(0.0, v) for k, v in self.available.items() if is_public(k)}

    def largest_node(self) -> dict:
        return {k: v for k, v in self.total.items() if not k.startswith("node:")}

    # ------------------------------------------------------------ transactions

    def acquire(self, shape: tuple) -> tuple:
        """Take ``shape`` out of the free pool; returns the GPU ids it got."""
        for k, v in shape:
            self.available[k] = self.available.get(k, 0.0) - v
        gpus = gpu_amount(shape)
        return self._pick_gpus(gpus) or () if gpus else ()

    def release(self, shape: tuple, gpu_ids: tuple, lent_cpu: float = 0.0) -> None:
        """Give back what ``acquire`` took (minus ``lent_cpu`` already given back while blocked)."""
        for k, v in shape:
            if k in self.total:  # a placement group bundle may be gone meanwhile
                self.available[k] = self.available.get(k, 0.0) + v
        self.available["CPU"] = self.available.get("CPU", 0.0) - lent_cpu
        gpus = gpu_amount(shape)
        for g in gpu_ids:
            self.gpu_free[g] = min(1.0, self.gpu_free[g] + (1.0 if gpus >= 1 else gpus))

    def lend_cpu(self, cpu: float) -> None:
        """A leased worker blocked in get(): its CPU may run other work meanwhile."""
        self.available["CPU"] = self.available.get("CPU", 0.0) + cpu

    def take_back_cpu(self, cpu: float) -> None:
        self.available["CPU"] = self.available.get("CPU", 0.0) - cpu

    # ------------------------------------------------- placement group bundles

    def add_bundle(self, pg_id: str, index: int, bundle: dict) -> None:
        """Move ``bundle`` out of the free pool and offer it under the bundle's names."""
        for k, v in bundle.items():
            self.available[k] = self.available.get(k, 0.0) - v
        extra = dict(bundle)
        extra["bundle"] = MARKER_UNITS
        for k, v in extra.items():
            for gk in bundle_keys(pg_id, index, k):
                self.total[gk] = self.total.get(gk, 0.0) + v
                self.available[gk] = self.available.get(gk, 0.0) + v

    def remove_bundle(self, pg_id: str, index: int, bundle: dict, last_here: bool) -> None:
        """Undo ``add_bundle``; ``last_here``: no other bundle of the group stays on this node."""
        extra = dict(bundle)
        extra["bundle"] = MARKER_UNITS
        for k, v in extra.items():
            for gk in bundle_keys(pg_id, index, k):
                for table in (self.total, self.available):
                    left = table.get(gk, 0.0) - v
                    if left <= EPS or (last_here and gk.endswith(f"_group_{pg_id}")):
                        table.pop(gk, None)
                    else:
                        table[gk] = left
        for k, v in bundle.items():
            self.available[k] = self.available.get(k, 0.0) + v

    # ---------------------------------------------------------------- internals

    def _pick_gpus(self, amount: float, dry: bool = False) -> tuple | None:
        if amount >= 1:
            n = int(round(amount))
            free = [g for g, f in sorted(self.gpu_free.items()) if f >= 1.0 - EPS]
            if len(free) < n:
                return None
            chosen = tuple(free[:n])
            if not dry:
                for g in chosen:
                    self.gpu_free[g] = 0.0
            return chosen
        for g, f in sorted(self.gpu_free.items()):
            if f + EPS >= amount:
                if not dry:
                    self.gpu_free[g] = f - amount
                return (g,)
        return None
