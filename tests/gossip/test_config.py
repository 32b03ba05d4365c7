from __future__ import annotations

import dataclasses

import pytest

from meshcompute.gossip import ConfigError, GossipConfig


@pytest.mark.parametrize("profile", [GossipConfig.local, GossipConfig.lan, GossipConfig.wan])
def test_profiles_validate(profile) -> None:
    cfg = profile()
    cfg.validate()
    assert cfg.probe_timeout < cfg.probe_interval


def test_default_is_lan() -> None:
    assert GossipConfig() == GossipConfig.lan()


def test_profiles_derive_from_base() -> None:
    base = GossipConfig()
    local, wan = GossipConfig.local(), GossipConfig.wan()
    # fields a profile does not override are inherited from the base
    assert local.indirect_checks == base.indirect_checks
    assert local.probe_interval == base.probe_interval
    assert wan.meta_max_bytes == base.meta_max_bytes
    assert wan.probe_interval > base.probe_interval


def test_overrides() -> None:
    cfg = GossipConfig.local(probe_interval=0.5)
    assert cfg.probe_interval == 0.5
    assert cfg.probe_timeout == GossipConfig.local().probe_timeout


@pytest.mark.parametrize(
    "changes",
    [
        {"probe_interval": 0.0},
        {"probe_interval": -1.0},
        {"probe_timeout": 0.3},  # >= probe_interval
        {"indirect_checks": 2.5},
        {"gossip_nodes": 0},
        {"packet_budget_bytes": 100},
        {"meta_max_bytes": 70_000},
        {"suspicion_mult": float("nan")},
        {"gossip_to_the_dead_time": 100.0},  # > dead_node_reclaim_time
        {"retransmit_mult": True},
    ],
)
def test_validate_rejects(changes) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(GossipConfig(), **changes)


@pytest.mark.parametrize("profile", [GossipConfig.local, GossipConfig.lan])
@pytest.mark.parametrize("n", [2, 5, 10])
def test_small_cluster_detection_bound_under_2s(profile, n: int) -> None:
    # the documented bound: two periods + max suspicion + dissemination
    assert profile().expected_detection_time(n) <= 2.0


def test_suspicion_bounds_and_scaling() -> None:
    cfg = GossipConfig.lan()
    assert cfg.suspicion_bounds(10) == pytest.approx((0.4, 1.2))
    assert cfg.suspicion_bounds(1000) == pytest.approx((1.2, 3.6))
    assert cfg.retransmit_limit(1000) == 24
    assert cfg.push_pull_period(32) == cfg.push_pull_interval
    assert cfg.push_pull_period(1000) == 6 * cfg.push_pull_interval  # ceil(9.97 - 5) + 1
