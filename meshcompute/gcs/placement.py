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

    if strategy == "STRICT_PACK":
        used = set(fixed.values())
        cands = sorted(used) if used else nodes
        for n in cands:
            trial = dict(room.get(n, {}))
            ok = True
            for i in todo:
                if not bundle_fits(bundles[i], trial):
                    ok = False
                    break
                _take(trial, bundles[i])
            if ok:
                return dict.fromkeys(todo, n)
        return None

    if strategy == "STRICT_SPREAD":
        used = set(fixed.values())
        for i in todo:
            # The free node with the most room left, so later bundles still find one.
            cands = [n for n in nodes if n not in used and bundle_fits(bundles[i], room[n])]
            if not cands:
                return None
            n = max(cands, key=lambda n: (sum(room[n].values()), _neg(n)))
            out[i] = n
            used.add(n)
            _take(room[n], bundles[i])
        return out

    if strategy == "PACK":
        # One node if the whole rest fits on one (preferring nodes already used).
        used = sorted(set(fixed.values()))
        for n in used + [n for n in nodes if n not in used]:
            trial = dict(room.get(n, {}))
            ok = True
            for i in todo:
                if not bundle_fits(bundles[i], trial):
                    ok = False
                    break
                _take(trial, bundles[i])
            if ok:
                return dict.fromkeys(todo, n)
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


def _neg(s: str) -> tuple:
    # max() with ties broken towards the smallest id.
    return tuple(-ord(c) for c in s)
