"""Where a placement group's bundles go: a pure function of the nodes' free resources.

The leader runs :func:`place_bundles` over its view of the mesh (gossiped free
resources, minus what placements still being reserved will take) and commits
the answer; each chosen node then reserves its bundles or refuses (its real
free resources may differ from the view), and a refusal sends the group back
to be placed again (see state.py). So this function may be optimistic, never
unsafe.

Strategies (as in Ray):

* ``STRICT_PACK``: every bundle on one node.
* ``PACK``: as few nodes as possible (one if it fits), best effort.
* ``STRICT_SPREAD``: every bundle on a different node.
* ``SPREAD``: different nodes where possible, sharing only when it must.
"""

from __future__ import annotations

__all__ = ["place_bundles", "bundle_fits"]

_EPS = 1e-9


def bundle_fits(bundle: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + _EPS >= v for k, v in bundle.items() if v > 0)


def _take(free: dict[str, float], bundle: dict[str, float]) -> None:
    for k, v in bundle.items():
        free[k] = free.get(k, 0.0) - v


def place_bundles(
    bundles: list[dict[str, float]],
    strategy: str,
    free: dict[str, dict[str, float]],
    fixed: dict[int, str] | None = None,
) -> dict[int, str] | None:
    """Choose a node for every bundle not in ``fixed``; None if they do not fit now.

    ``free``: node id -> free resources (not modified). ``fixed``: bundles that
    already hold a node (a group being re-placed after a node died); the answer
    covers only the others, and respects the strategy across both. Ties go to
    the node id that sorts first, so the answer is deterministic.
    """
    fixed = dict(fixed or {})
    todo = [i for i in range(len(bundles)) if i not in fixed]
    if not todo:
        return {}
    room = {n: dict(f) for n, f in free.items()}
    for i, n in fixed.items():
        if n in room:
            _take(room[n], bundles[i])
    nodes = sorted(room)
    out: dict[int, str] = {}
    # Biggest bundles first: they have the fewest homes.
    todo.sort(key=lambda i: (-sum(bundles[i].values()), i))

    def one_node(cands: list[str]) -> dict[int, str] | None:
        """Every bundle left on the first of ``cands`` that holds them all."""
        for n in cands:
            trial = dict(room.get(n, {}))
            for i in todo:
                if not bundle_fits(bundles[i], trial):
                    break
                _take(trial, bundles[i])
            else:
                return dict.fromkeys(todo, n)
        return None

    if strategy == "STRICT_PACK":
        used = sorted(set(fixed.values()))
        return one_node(used or nodes)

    if strategy == "STRICT_SPREAD":
        # A matching of bundles to distinct nodes (Kuhn's augmenting paths):
        # greedy choices can strand a bundle that only one node can hold.
        # Each bundle tries the nodes with the most room first (ties: smallest id).
        by_room = sorted(nodes, key=lambda n: (-sum(room[n].values()), n))
        cands = {i: [n for n in by_room if n not in set(fixed.values()) and bundle_fits(bundles[i], room[n])]
                 for i in todo}
        owner: dict[str, int] = {}

        def assign(i: int, seen: set[str]) -> bool:
            # A free node first (so the preference order holds when nothing
            # conflicts), else move another bundle out of the way.
            for n in cands[i]:
                if n not in owner and n not in seen:
                    owner[n] = i
                    return True
            for n in cands[i]:
                if n in seen:
                    continue
                seen.add(n)
                if assign(owner[n], seen):
                    owner[n] = i
                    return True
            return False

        for i in todo:
            if not assign(i, set()):
                return None
        return {i: n for n, i in owner.items()}

    if strategy == "PACK":
        # One node if the whole rest fits on one (preferring nodes already used).
        used = sorted(set(fixed.values()))
        together = one_node(used + [n for n in nodes if n not in used])
        if together is not None:
            return together
        # Else first fit over the nodes with the most room.
        order = sorted(nodes, key=lambda n: (-sum(room[n].values()), n))
        for i in todo:
            n = next((n for n in order if bundle_fits(bundles[i], room[n])), None)
            if n is None:
                return None
            out[i] = n
            _take(room[n], bundles[i])
        return out

    if strategy == "SPREAD":
        count = {n: 0 for n in nodes}
        for n in fixed.values():
            if n in count:
                count[n] += 1
        for i in todo:
            cands = [n for n in nodes if bundle_fits(bundles[i], room[n])]
            if not cands:
                return None
            n = min(cands, key=lambda n: (count[n], -sum(room[n].values()), n))
            out[i] = n
            count[n] += 1
            _take(room[n], bundles[i])
        return out

    raise ValueError(f"unknown placement strategy {strategy!r}")

