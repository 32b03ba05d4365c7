"""place_bundles: where a placement group's bundles go, for each strategy."""

from __future__ import annotations

import copy

import pytest

from meshcompute.gcs.placement import bundle_fits, place_bundles

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def three_nodes(cpus: float = 2.0) -> dict[str, dict[str, float]]:
    return {"a": {"CPU": cpus}, "b": {"CPU": cpus}, "c": {"CPU": cpus}}


def cpu_bundles(n: int, cpus: float = 1.0) -> list[dict[str, float]]:
    return [{"CPU": cpus} for _ in range(n)]


# ------------------------------------------------------------- bundle_fits


def test_bundle_fits_compares_every_positive_resource():
    assert bundle_fits({"CPU": 2.0}, {"CPU": 2.0}) is True
    assert bundle_fits({"CPU": 2.0}, {"CPU": 1.5}) is False
    assert bundle_fits({"CPU": 1.0, "GPU": 1.0}, {"CPU": 4.0}) is False
    assert bundle_fits({"CPU": 1.0, "GPU": 0.0}, {"CPU": 4.0}) is True  # a zero ask needs nothing
    assert bundle_fits({}, {}) is True
    assert bundle_fits({"CPU": 0.3}, {"CPU": 0.1 + 0.2 - 1e-12}) is True  # float noise is tolerated


# ------------------------------------------------------------- STRICT_PACK


def test_strict_pack_puts_every_bundle_on_the_first_node_that_holds_them_all():
    assert place_bundles(cpu_bundles(2), "STRICT_PACK", three_nodes()) == {0: "a", 1: "a"}
    free = {"a": {"CPU": 1.0}, "b": {"CPU": 1.0}, "c": {"CPU": 2.0}}
    assert place_bundles(cpu_bundles(2), "STRICT_PACK", free) == {0: "c", 1: "c"}


def test_strict_pack_is_none_when_no_single_node_holds_them_all():
    # Six CPUs free in all, but no node has three.
    assert place_bundles(cpu_bundles(3), "STRICT_PACK", three_nodes()) is None


def test_strict_pack_stays_on_the_fixed_node():
    # Bundle 0 already holds b: the rest must join it even though a sorts first.
    assert place_bundles(cpu_bundles(2), "STRICT_PACK", three_nodes(), fixed={0: "b"}) == {1: "b"}


def test_strict_pack_counts_the_fixed_bundles_against_their_node():
    # b has 2 CPUs; bundle 0 takes one, so bundles 1 and 2 do not both fit there.
    assert place_bundles(cpu_bundles(3), "STRICT_PACK", three_nodes(), fixed={0: "b"}) is None


def test_strict_pack_with_the_fixed_node_gone_is_none():
    free = {"a": {"CPU": 8.0}}
    assert place_bundles(cpu_bundles(2), "STRICT_PACK", free, fixed={0: "dead"}) is None


# ----------------------------------------------------------- STRICT_SPREAD


def test_strict_spread_puts_each_bundle_on_a_different_node():
    assert place_bundles(cpu_bundles(3), "STRICT_SPREAD", three_nodes()) == {0: "a", 1: "b", 2: "c"}


def test_strict_spread_is_none_with_more_bundles_than_nodes():
    assert place_bundles(cpu_bundles(4), "STRICT_SPREAD", three_nodes(8.0)) is None


def test_strict_spread_prefers_the_nodes_with_the_most_room():
    free = {"a": {"CPU": 1.0}, "b": {"CPU": 4.0}, "c": {"CPU": 2.0}}
    assert place_bundles(cpu_bundles(2), "STRICT_SPREAD", free) == {0: "b", 1: "c"}


def test_strict_spread_is_none_when_a_bundle_fits_nowhere():
    free = {"a": {"CPU": 1.0}, "b": {"CPU": 4.0}, "c": {"CPU": 2.0}}
    assert place_bundles([{"CPU": 3.0}, {"CPU": 3.0}], "STRICT_SPREAD", free) is None


def test_strict_spread_avoids_the_nodes_of_fixed_bundles():
    assert place_bundles(cpu_bundles(3), "STRICT_SPREAD", three_nodes(), fixed={0: "a"}) == {1: "b", 2: "c"}
    # Only a and b are left, and a already holds bundle 0.
    free = {"a": {"CPU": 8.0}, "b": {"CPU": 8.0}}
    assert place_bundles(cpu_bundles(3), "STRICT_SPREAD", free, fixed={0: "a"}) is None


def test_strict_spread_avoids_a_fixed_node_missing_from_free():
    free = {"a": {"CPU": 1.0}, "b": {"CPU": 1.0}}
    assert place_bundles(cpu_bundles(2), "STRICT_SPREAD", free, fixed={1: "zz"}) == {0: "a"}


def test_strict_spread_finds_a_placement_when_one_exists():
    free = {"cpu": {"CPU": 4.0}, "gpu": {"CPU": 8.0, "GPU": 1.0}}
    bundles = [{"CPU": 4.0}, {"GPU": 1.0}]
    assert place_bundles(bundles, "STRICT_SPREAD", free) == {0: "cpu", 1: "gpu"}


def test_strict_spread_breaks_ties_towards_the_id_that_sorts_first():
    free = {"n1": {"CPU": 2.0}, "n10": {"CPU": 2.0}}
    assert place_bundles(cpu_bundles(1), "STRICT_SPREAD", free) == {0: "n1"}


# -------------------------------------------------------------------- PACK


def test_pack_uses_one_node_when_everything_fits_there():
    assert place_bundles(cpu_bundles(2), "PACK", three_nodes()) == {0: "a", 1: "a"}


def test_pack_spreads_over_as_few_nodes_as_first_fit_gives_when_one_is_not_enough():
    assert place_bundles(cpu_bundles(3), "PACK", three_nodes()) == {0: "a", 1: "a", 2: "b"}


def test_pack_is_none_when_the_bundles_do_not_fit_at_all():
    assert place_bundles(cpu_bundles(7), "PACK", three_nodes()) is None


def test_pack_prefers_the_node_of_the_fixed_bundles():
    assert place_bundles(cpu_bundles(2), "PACK", three_nodes(), fixed={0: "b"}) == {1: "b"}


def test_pack_leaves_the_fixed_node_when_the_rest_does_not_fit_there():
    free = {"a": {"CPU": 4.0}, "b": {"CPU": 2.0}}
    # b keeps 1 CPU after bundle 0; bundles 1 and 2 fit together only on a.
    assert place_bundles(cpu_bundles(3), "PACK", free, fixed={0: "b"}) == {1: "a", 2: "a"}


def test_pack_places_the_biggest_bundles_first():
    # In index order bundle 0 would take b and bundle 1 (3 CPUs) would fit nowhere.
    free = {"a": {"CPU": 2.0}, "b": {"CPU": 3.0}}
    assert place_bundles([{"CPU": 1.0}, {"CPU": 3.0}], "PACK", free) == {0: "a", 1: "b"}


# ------------------------------------------------------------------ SPREAD


def test_spread_uses_distinct_nodes_when_it_can():
    assert place_bundles(cpu_bundles(3), "SPREAD", three_nodes()) == {0: "a", 1: "b", 2: "c"}


def test_spread_shares_a_node_only_when_it_must():
    assert place_bundles(cpu_bundles(4), "SPREAD", three_nodes()) == {0: "a", 1: "b", 2: "c", 3: "a"}
    # Only a has room for the two big bundles.
    free = {"a": {"CPU": 4.0}, "b": {"CPU": 1.0}}
    assert place_bundles(cpu_bundles(2, 2.0), "SPREAD", free) == {0: "a", 1: "a"}


def test_spread_prefers_the_node_with_more_room_among_equally_used_ones():
    free = {"a": {"CPU": 1.0}, "b": {"CPU": 3.0}, "c": {"CPU": 2.0}}
    assert place_bundles(cpu_bundles(2), "SPREAD", free) == {0: "b", 1: "c"}


def test_spread_counts_the_fixed_bundles():
    assert place_bundles(cpu_bundles(3), "SPREAD", three_nodes(), fixed={0: "a", 1: "b"}) == {2: "c"}
    assert place_bundles(cpu_bundles(2), "SPREAD", three_nodes(), fixed={0: "a"}) == {1: "b"}


def test_spread_is_none_when_a_bundle_fits_nowhere():
    assert place_bundles(cpu_bundles(1, 3.0), "SPREAD", three_nodes()) is None
    assert place_bundles(cpu_bundles(4, 2.0), "SPREAD", three_nodes()) is None


# ----------------------------------------------------- resources, edge cases


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_gpu_bundle_goes_only_to_a_node_with_a_gpu(strategy):
    free = {"a": {"CPU": 8.0}, "g": {"CPU": 8.0, "GPU": 2.0}, "z": {"CPU": 16.0}}
    assert place_bundles([{"GPU": 1.0, "CPU": 1.0}], strategy, free) == {0: "g"}
    assert place_bundles([{"GPU": 3.0}], strategy, free) is None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_custom_resource_is_matched_by_name(strategy):
    free = {"a": {"CPU": 4.0}, "b": {"CPU": 4.0, "accel": 1.0}, "c": {"CPU": 4.0, "node:c": 1.0}}
    assert place_bundles([{"accel": 1.0}], strategy, free) == {0: "b"}
    assert place_bundles([{"node:c": 0.5}], strategy, free) == {0: "c"}
    assert place_bundles([{"other": 1.0}], strategy, free) is None


def test_gpu_and_cpu_bundles_strict_pack_on_the_gpu_node():
    free = {"a": {"CPU": 8.0}, "g": {"CPU": 2.0, "GPU": 1.0}}
    assert place_bundles([{"GPU": 1.0}, {"CPU": 2.0}], "STRICT_PACK", free) == {0: "g", 1: "g"}
    assert place_bundles([{"GPU": 1.0}, {"CPU": 3.0}], "STRICT_PACK", free) is None


def test_pack_counts_each_resource_separately():
    # g has CPUs left but its only GPU goes to the first GPU bundle.
    free = {"a": {"CPU": 8.0}, "g": {"CPU": 8.0, "GPU": 1.0}}
    assert place_bundles([{"GPU": 1.0}, {"GPU": 1.0}], "PACK", free) is None
    assert place_bundles([{"GPU": 1.0}, {"CPU": 4.0}, {"CPU": 4.0}], "PACK", free) == {0: "g", 1: "g", 2: "g"}


def test_zero_resource_asks_fit_anywhere():
    free = {"a": {"CPU": 1.0}}
    assert place_bundles([{"CPU": 1.0, "GPU": 0.0}], "STRICT_PACK", free) == {0: "a"}
    assert place_bundles([{}, {}], "PACK", free) == {0: "a", 1: "a"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nothing_to_place_gives_an_empty_answer(strategy):
    assert place_bundles([], strategy, three_nodes()) == {}
    assert place_bundles(cpu_bundles(2), strategy, three_nodes(), fixed={0: "a", 1: "a"}) == {}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_nodes_gives_none(strategy):
    assert place_bundles(cpu_bundles(1), strategy, {}) is None


def test_an_unknown_strategy_raises():
    with pytest.raises(ValueError, match="unknown placement strategy 'BEST'"):
        place_bundles(cpu_bundles(1), "BEST", three_nodes())


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fixed", [None, {0: "a"}])
def test_the_inputs_are_not_modified(strategy, fixed):
    free = {"a": {"CPU": 4.0, "GPU": 1.0}, "b": {"CPU": 4.0}, "c": {"CPU": 4.0}}
    bundles = [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 2.0}]
    free_before, bundles_before = copy.deepcopy(free), copy.deepcopy(bundles)
    fixed_before = copy.deepcopy(fixed)
    result = place_bundles(bundles, strategy, free, fixed)
    if fixed is None:
        assert result is not None and len(result) == 3
    assert free == free_before
    assert bundles == bundles_before
    assert fixed == fixed_before


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_answer_is_deterministic_and_ignores_the_order_of_free(strategy):
    free = {"d": {"CPU": 3.0}, "b": {"CPU": 5.0}, "a": {"CPU": 5.0}, "c": {"CPU": 3.0}}
    reordered = dict(reversed(list(free.items())))
    bundles = [{"CPU": 1.0}, {"CPU": 2.0}, {"CPU": 1.0}]
    first = place_bundles(bundles, strategy, free)
    assert first is not None
    assert place_bundles(bundles, strategy, free) == first
    assert place_bundles(bundles, strategy, reordered) == first
    expected = {
        "PACK": {0: "a", 1: "a", 2: "a"},
        "STRICT_PACK": {0: "a", 1: "a", 2: "a"},
        "SPREAD": {1: "a", 0: "b", 2: "c"},
        "STRICT_SPREAD": {1: "a", 0: "b", 2: "c"},
    }
    assert first == expected[strategy]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_answer_fits_the_free_resources(strategy):
    free = {"a": {"CPU": 3.0, "GPU": 1.0}, "b": {"CPU": 2.0}, "c": {"CPU": 4.0, "mem": 10.0}}
    bundles = [{"CPU": 1.0}, {"CPU": 1.0, "mem": 4.0}, {"GPU": 1.0, "CPU": 2.0}]
    result = place_bundles(bundles, strategy, free)
    if strategy == "STRICT_PACK":
        assert result is None  # no node has CPU, mem and a GPU
        return
    assert result is not None and set(result) == {0, 1, 2}
    used: dict[str, dict[str, float]] = {}
    for i, n in result.items():
        for k, v in bundles[i].items():
            used.setdefault(n, {})[k] = used.get(n, {}).get(k, 0.0) + v
    for n, u in used.items():
        assert bundle_fits(u, free[n]), (n, u)
    if strategy == "STRICT_SPREAD":
        assert len(set(result.values())) == 3
