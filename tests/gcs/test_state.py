"""GcsState, the control store's state machine: every write, the reads, dedup, snapshots, determinism."""

from __future__ import annotations

import pickle
import random

import pytest

import meshcompute.gcs.state as state_mod
from meshcompute.gcs.state import READS, WRITES, GcsState, decode_command, encode_command


class Log:
    """Applies commands to one GcsState at increasing log indexes, as a replica does."""

    def __init__(self, state: GcsState | None = None) -> None:
        self.state = state if state is not None else GcsState()
        self.index = self.state.applied_index

    def __call__(self, *op, uid: bytes | None = None):
        self.index += 1
        return self.state.apply(self.index, uid, op)

    def read(self, *op):
        return self.state.read(op)

    def entry(self, data: bytes):
        """Apply a log entry's bytes, decoded here as a replica decodes its own copy."""
        uid, op = decode_command(data)
        return self(*op, uid=uid)


def all_reads(s: GcsState) -> dict:
    return {op: s.read((op,) if op not in ("kv_list",) else (op, b"")) for op in
            ("kv_list", "pg_table", "nodes", "actors", "jobs", "info")}


# ---------------------------------------------------------------------- kv


def test_kv_put_returns_whether_key_existed_and_get_reads_the_value():
    log = Log()
    assert log("kv_put", b"k", b"v1", True) is False
    assert log.read("kv_get", b"k") == b"v1"
    assert log("kv_put", b"k", b"v2", True) is True
    assert log.read("kv_get", b"k") == b"v2"
    assert log.read("kv_get", b"missing") is None


def test_kv_put_without_overwrite_keeps_the_existing_value():
    log = Log()
    assert log("kv_put", b"k", b"first", False) is False
    assert log("kv_put", b"k", b"second", False) is True
    assert log.read("kv_get", b"k") == b"first"


def test_kv_del_single_key_returns_how_many_were_deleted():
    log = Log()
    log("kv_put", b"a", b"1", True)
    log("kv_put", b"ab", b"2", True)
    assert log("kv_del", b"a", False) == 1
    assert log.read("kv_get", b"a") is None
    assert log.read("kv_get", b"ab") == b"2"  # not a prefix delete
    assert log("kv_del", b"a", False) == 0


def test_kv_del_by_prefix_removes_only_the_matching_keys():
    log = Log()
    for k in (b"job/1", b"job/2", b"jobs", b"other", b"xjob/3"):
        log("kv_put", k, b"v", True)
    assert log("kv_del", b"job/", True) == 2
    assert log.read("kv_list", b"") == [b"jobs", b"other", b"xjob/3"]
    assert log("kv_del", b"nothing", True) == 0


def test_kv_list_by_prefix_is_sorted():
    log = Log()
    for k in (b"p/c", b"p/a", b"q/z", b"p/b", b"p"):
        log("kv_put", k, b"v", True)
    assert log.read("kv_list", b"p/") == [b"p/a", b"p/b", b"p/c"]
    assert log.read("kv_list", b"") == [b"p", b"p/a", b"p/b", b"p/c", b"q/z"]
    assert log.read("kv_list", b"none") == []


def test_kv_cas_with_expected_none_inserts_an_absent_key():
    log = Log()
    assert log("kv_cas", b"k", None, b"v") == (True, None)
    assert log.read("kv_get", b"k") == b"v"


def test_kv_cas_with_expected_none_fails_when_the_key_exists():
    log = Log()
    log("kv_put", b"k", b"v", True)
    assert log("kv_cas", b"k", None, b"w") == (False, b"v")
    assert log.read("kv_get", b"k") == b"v"


def test_kv_cas_mismatch_returns_false_and_the_current_value_without_change():
    log = Log()
    log("kv_put", b"k", b"actual", True)
    assert log("kv_cas", b"k", b"guess", b"new") == (False, b"actual")
    assert log.read("kv_get", b"k") == b"actual"
    assert log("kv_cas", b"absent", b"guess", b"new") == (False, None)
    assert log.read("kv_get", b"absent") is None


def test_kv_cas_match_swaps_and_returns_the_value_before():
    log = Log()
    log("kv_put", b"k", b"old", True)
    assert log("kv_cas", b"k", b"old", b"new") == (True, b"old")
    assert log.read("kv_get", b"k") == b"new"


def test_kv_cas_to_none_deletes_the_key():
    log = Log()
    log("kv_put", b"k", b"v", True)
    assert log("kv_cas", b"k", b"v", None) == (True, b"v")
    assert log.read("kv_get", b"k") is None
    assert log.read("kv_list", b"") == []


def test_kv_rejects_non_bytes_keys_and_values_without_changing_anything():
    log = Log()
    log("kv_put", b"k", b"v", True)
    for op in (("kv_put", "k", b"v", True), ("kv_put", b"k", "v", True), ("kv_del", "k", False),
               ("kv_cas", "k", None, b"v"), ("kv_cas", b"k", b"v", "str")):
        result = log(*op)
        assert result[0] == "error"
        assert "bytes" in result[1]
    assert log.read("kv_list", b"") == [b"k"]
    assert log.read("kv_get", b"k") == b"v"


# ------------------------------------------------------------------- dedup


def test_a_repeated_uid_returns_the_cached_result_and_does_not_apply_twice():
    log = Log()
    assert log("kv_put", b"k", b"v1", True, uid=b"u1") is False
    assert log("kv_put", b"k", b"v2", True, uid=b"u2") is True
    # The retry of u1 (its first try committed) must not put v1 back.
    assert log("kv_put", b"k", b"v1", True, uid=b"u1") is False
    assert log.read("kv_get", b"k") == b"v2"


def test_a_retried_cas_returns_its_first_result():
    log = Log()
    assert log("kv_cas", b"k", None, b"v", uid=b"cas-1") == (True, None)
    # Applied again it would fail with (False, b"v"): the retry sees the first answer.
    assert log("kv_cas", b"k", None, b"v", uid=b"cas-1") == (True, None)
    assert log.read("kv_get", b"k") == b"v"


def test_a_repeated_uid_returns_the_cached_result_even_for_a_different_command():
    log = Log()
    assert log("kv_del", b"k", False, uid=b"u") == 0
    assert log("kv_put", b"k", b"v", True, uid=b"u") == 0
    assert log.read("kv_get", b"k") is None


def test_commands_without_a_uid_are_never_deduplicated():
    log = Log()
    assert log("kv_put", b"k", b"v", False) is False
    assert log("kv_put", b"k", b"v", False) is True
    assert log("job_add", "d1", {}) == "00000001"
    assert log("job_add", "d2", {}) == "00000002"


def test_a_duplicate_still_advances_the_applied_index():
    log = Log()
    log("kv_put", b"k", b"v", True, uid=b"u")
    log("kv_put", b"k", b"v", True, uid=b"u")
    assert log.read("info")["applied"] == 2


def test_the_dedup_window_forgets_the_oldest_uid(monkeypatch):
    monkeypatch.setattr(state_mod, "DEDUP_WINDOW", 2)
    log = Log()
    assert log("kv_put", b"a", b"1", False, uid=b"u1") is False
    assert log("kv_put", b"b", b"1", False, uid=b"u2") is False
    assert log("kv_put", b"c", b"1", False, uid=b"u3") is False
    assert list(log.state.done) == [b"u2", b"u3"]
    # u1 fell out of the window, so it is applied again (and now finds the key).
    assert log("kv_put", b"a", b"1", False, uid=b"u1") is True
    # u3 is still remembered.
    assert log("kv_put", b"c", b"1", False, uid=b"u3") is False


def test_errors_are_cached_under_their_uid_too():
    log = Log()
    first = log("kv_put", "not-bytes", b"v", True, uid=b"u")
    assert first[0] == "error"
    assert log("kv_put", "not-bytes", b"v", True, uid=b"u") == first


# -------------------------------------------------------------- init, nodes, jobs


def test_init_records_the_config_only_once():
    log = Log()
    assert log("init", {"voters": 3}) == {"voters": 3}
    assert log("init", {"voters": 5}) == {"voters": 3}
    assert log.read("info")["config"] == {"voters": 3}


def test_init_after_a_job_add_still_records_the_config():
    log = Log()
    log("job_add", "driver", {})
    log("init", {"voters": 5})
    assert log.read("info")["config"].get("voters") == 5


def test_node_add_keeps_only_known_fields_and_the_registration_order():
    log = Log()
    assert log("node_add", "n1", {"address": "addr1", "resources": {"CPU": 2.0}, "host": "h1", "junk": 1}) is True
    assert log("node_add", "n2", {"address": "addr2"}) is True
    assert log.read("nodes") == {
        "n1": {"node_id": "n1", "registered": 0, "address": "addr1", "resources": {"CPU": 2.0}, "host": "h1",
               "state": "ALIVE"},
        "n2": {"node_id": "n2", "registered": 1, "address": "addr2", "state": "ALIVE"},
    }


def test_node_dead_then_node_add_revives_the_node_keeping_its_registration():
    log = Log()
    log("node_add", "n1", {"address": "a"})
    log("node_add", "n2", {"address": "b"})
    assert log("node_dead", "n1") is True
    assert log("node_dead", "n1") is False  # already dead
    assert log("node_dead", "nope") is False  # unknown
    assert log.read("nodes")["n1"]["state"] == "DEAD"
    log("node_add", "n1", {"address": "a2"})
    assert log.read("nodes")["n1"] == {"node_id": "n1", "registered": 0, "address": "a2", "state": "ALIVE"}


def test_job_add_assigns_sequential_ids_once_per_key_and_job_finish_once():
    log = Log()
    assert log("job_add", "d1", {"pid": 10}) == "00000001"
    assert log("job_add", "d2", {"pid": 11}) == "00000002"
    assert log("job_add", "d1", {"pid": 99}) == "00000001"
    assert log("job_finish", "d1", 5.5) is True
    assert log("job_finish", "d1", 6.0) is False
    assert log("job_finish", "unknown", 1.0) is False
    assert log.read("jobs") == {
        "d1": {"pid": 10, "job_id": "00000001", "finished": 5.5},
        "d2": {"pid": 11, "job_id": "00000002", "finished": None},
    }


def test_finished_jobs_beyond_the_cap_are_dropped_oldest_first(monkeypatch):
    monkeypatch.setattr(state_mod, "MAX_FINISHED_JOBS", 1)
    log = Log()
    for k in ("d1", "d2", "d3"):
        log("job_add", k, {})
    log("job_finish", "d2", 1.0)
    log("job_finish", "d1", 2.0)
    # Both finished; the cap keeps the newest registered finished job (d2) and every running one (d3).
    assert list(log.read("jobs")) == ["d2", "d3"]


# ------------------------------------------------------------------ actors


def test_actor_put_creates_a_pending_record_and_merges_fields():
    log = Log()
    assert log("actor_put", b"A", {"class_name": "C", "node_id": "n1", "seq": 1}) is True
    assert log.read("actors") == {b"A": {"actor_id": b"A", "state": "PENDING", "restarts": 0, "class_name": "C",
                                         "node_id": "n1", "seq": 1}}
    assert log("actor_put", b"A", {"state": "ALIVE", "seq": 2}) is True
    assert log.read("actors")[b"A"]["state"] == "ALIVE"
    assert log.read("actors")[b"A"]["class_name"] == "C"


def test_actor_put_with_an_older_seq_is_ignored():
    log = Log()
    log("actor_put", b"A", {"state": "ALIVE", "seq": 5, "restarts": 2})
    assert log("actor_put", b"A", {"state": "RESTARTING", "seq": 4, "restarts": 1}) is False
    rec = log.read("actors")[b"A"]
    assert (rec["state"], rec["seq"], rec["restarts"]) == ("ALIVE", 5, 2)
    assert log("actor_put", b"A", {"state": "RESTARTING", "seq": 6, "restarts": 3}) is True
    rec = log.read("actors")[b"A"]
    assert (rec["state"], rec["seq"], rec["restarts"]) == ("RESTARTING", 6, 3)


def test_dead_is_final_for_an_actor():
    log = Log()
    log("actor_put", b"A", {"state": "ALIVE", "seq": 1})
    assert log("actor_put", b"A", {"state": "DEAD", "seq": 2, "reason": "killed"}) is True
    assert log("actor_put", b"A", {"state": "ALIVE", "seq": 3}) is False
    rec = log.read("actors")[b"A"]
    assert (rec["state"], rec["seq"], rec["reason"]) == ("DEAD", 2, "killed")
    assert list(log.state.dead_actors) == [b"A"]


def test_dead_actor_records_beyond_the_cap_are_dropped_oldest_first(monkeypatch):
    monkeypatch.setattr(state_mod, "MAX_DEAD_ACTORS", 2)
    log = Log()
    for a in (b"A1", b"A2", b"A3", b"A4", b"A5"):
        log("actor_put", a, {"state": "ALIVE"})
    for a in (b"A2", b"A1", b"A3"):
        log("actor_put", a, {"state": "DEAD"})
    # A2 died first, so it goes; the live ones are never dropped.
    assert list(log.read("actors")) == [b"A1", b"A3", b"A4", b"A5"]
    assert list(log.state.dead_actors) == [b"A1", b"A3"]
    log("actor_put", b"A5", {"state": "DEAD"})
    assert list(log.read("actors")) == [b"A3", b"A4", b"A5"]
    assert log.read("info")["actors"] == 3


# ------------------------------------------------------------------- names


def test_a_name_is_unique_within_its_namespace():
    log = Log()
    assert log("name_claim", "ns", "svc", b"A1", {"class_name": "C", "state": "ALIVE"}) == ("ok",)
    holder = {"actor_id": b"A1", "state": "ALIVE", "restarts": 0, "class_name": "C", "name": "svc",
              "namespace": "ns"}
    assert log("name_claim", "ns", "svc", b"A2", {"class_name": "D"}) == ("exists", b"A1", holder)
    assert log.read("name_lookup", "ns", "svc") == (b"A1", holder)
    assert b"A2" not in log.read("actors")


def test_the_same_name_in_another_namespace_is_fine():
    log = Log()
    assert log("name_claim", "ns1", "svc", b"A1", {}) == ("ok",)
    assert log("name_claim", "ns2", "svc", b"A2", {}) == ("ok",)
    assert log.read("name_lookup", "ns1", "svc")[0] == b"A1"
    assert log.read("name_lookup", "ns2", "svc")[0] == b"A2"
    assert log.read("name_lookup", "ns3", "svc") is None


def test_the_holder_may_claim_its_own_name_again():
    log = Log()
    assert log("name_claim", "ns", "svc", b"A1", {"seq": 1}) == ("ok",)
    assert log("name_claim", "ns", "svc", b"A1", {"seq": 2, "state": "ALIVE"}) == ("ok",)
    assert log.read("name_lookup", "ns", "svc")[1]["state"] == "ALIVE"


def test_a_name_whose_actor_is_dead_can_be_claimed_again():
    log = Log()
    log("name_claim", "ns", "svc", b"A1", {"state": "ALIVE"})
    log("actor_put", b"A1", {"state": "DEAD", "reason": "exited"})
    assert log.read("name_lookup", "ns", "svc") is None
    assert ("ns", "svc") not in log.state.names
    assert log("name_claim", "ns", "svc", b"A2", {"state": "ALIVE"}) == ("ok",)
    assert log.read("name_lookup", "ns", "svc")[0] == b"A2"


def test_a_name_held_by_a_dead_actor_id_is_claimable():
    # The names table may still point at a DEAD actor (its death freed another key); claiming checks the
    # holder's state, not only the table.
    log = Log()
    log("name_claim", "ns", "svc", b"A1", {"state": "ALIVE"})
    log("actor_put", b"A1", {"namespace": "other"})  # its record now names another namespace
    log("actor_put", b"A1", {"state": "DEAD"})
    assert log.state.names[("ns", "svc")] == b"A1"
    assert log.read("name_lookup", "ns", "svc") is None
    assert log("name_claim", "ns", "svc", b"A2", {}) == ("ok",)


def test_name_release_only_by_the_holder():
    log = Log()
    log("name_claim", "ns", "svc", b"A1", {})
    assert log("name_release", "ns", "svc", b"A2") is False
    assert log.read("name_lookup", "ns", "svc")[0] == b"A1"
    assert log("name_release", "ns", "svc", b"A1") is True
    assert log.read("name_lookup", "ns", "svc") is None
    assert log("name_release", "ns", "svc", b"A1") is False
    assert log("name_claim", "ns", "svc", b"A2", {}) == ("ok",)


def test_node_dead_marks_its_actors_dead_and_frees_their_names():
    log = Log()
    log("node_add", "n1", {})
    log("node_add", "n2", {})
    log("name_claim", "ns", "x", b"A1", {"node_id": "n1", "state": "ALIVE"})
    log("name_claim", "ns", "y", b"A2", {"node_id": "n2", "state": "ALIVE"})
    log("actor_put", b"A3", {"node_id": "n1", "state": "ALIVE"})
    log("actor_put", b"A4", {"node_id": "n1", "state": "DEAD", "reason": "earlier"})
    assert log("node_dead", "n1") is True
    actors = log.read("actors")
    assert {a: (r["state"], r.get("reason")) for a, r in actors.items()} == {
        b"A1": ("DEAD", "its node died"), b"A2": ("ALIVE", None), b"A3": ("DEAD", "its node died"),
        b"A4": ("DEAD", "earlier"),
    }
    assert log.read("name_lookup", "ns", "x") is None
    assert log.read("name_lookup", "ns", "y")[0] == b"A2"
    assert log.state.names == {("ns", "y"): b"A2"}
    assert list(log.state.dead_actors) == [b"A4", b"A1", b"A3"]
    assert log("name_claim", "ns", "x", b"A5", {}) == ("ok",)


def test_node_dead_leaves_a_restartable_actor_restarting_with_its_name_until_its_owner_exits():
    log = Log()
    log("node_add", "n1", {})
    log("name_claim", "ns", "x", b"A1", {"node_id": "n1", "state": "ALIVE", "max_restarts": 2, "restarts": 1,
                                         "owner": "n2/p_driver@"})
    log("actor_put", b"A2", {"node_id": "n1", "state": "ALIVE", "max_restarts": 1, "restarts": 1,
                             "owner": "n2/p_driver@"})  # used up
    log("actor_put", b"A3", {"node_id": "n1", "state": "ALIVE", "max_restarts": -1, "owner": "n1/p_driver@"})
    assert log("node_dead", "n1") is True
    actors = log.read("actors")
    assert {a: r["state"] for a, r in actors.items()} == {b"A1": "RESTARTING", b"A2": "DEAD", b"A3": "DEAD"}
    assert log.read("name_lookup", "ns", "x")[0] == b"A1"
    assert log.read("actor", b"A1")["node_id"] is None
    # Placed again by its owner: the new node's record (a higher seq) takes over.
    log("actor_put", b"A1", {"node_id": "n3", "state": "ALIVE", "seq": 1 << 20})
    assert log.read("actor", b"A1")["state"] == "ALIVE"
    # An owner that exits before placing it again leaves nobody to do it.
    log("actor_put", b"A4", {"node_id": "n1", "state": "ALIVE", "max_restarts": 1, "owner": "n2/p_other@"})
    log("node_add", "n1", {})
    log("node_dead", "n1")
    log("job_add", "n2/p_other@", {})
    log("job_finish", "n2/p_other@", 1.0)
    assert log.read("actor", b"A4")["state"] == "DEAD"


# --------------------------------------------------------- placement groups


def make_group(log: Log, pg_id: str = "pg1", n: int = 3, strategy: str = "SPREAD") -> None:
    assert log("pg_create", pg_id, [{"CPU": 1.0}] * n, strategy, "group", "creator") is True


def created_group(log: Log) -> None:
    """pg1 with bundles 0, 1, 2 on n1, n2, n3, all acked (attempt 0)."""
    make_group(log)
    assert log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n3"}) is True
    for i, n in enumerate(("n1", "n2", "n3")):
        assert log("pg_ack", "pg1", 0, n, [i], True, "") is True
    assert log.read("pg_get", "pg1")["state"] == "CREATED"


def test_pg_create_starts_pending_and_rejects_duplicates():
    log = Log()
    assert log("pg_create", "pg1", [{"CPU": 1.0}, {"GPU": 1.0}], "PACK", None, "drv") is True
    assert log.read("pg_get", "pg1") == {
        "placement_group_id": "pg1", "name": "", "strategy": "PACK",
        "bundles": {0: {"CPU": 1.0}, 1: {"GPU": 1.0}}, "state": "PENDING", "bundles_to_node_id": {},
        "attempt": 0, "reason": "", "creator": "drv",
    }
    assert log("pg_create", "pg1", [{"CPU": 9.0}], "SPREAD", "x", "drv") is False
    assert log.read("pg_get", "pg1")["strategy"] == "PACK"
    assert log.read("pg_get", "nope") is None


def test_pg_create_with_an_unknown_strategy_is_an_error():
    log = Log()
    result = log("pg_create", "pg1", [{"CPU": 1.0}], "BEST", "", "drv")
    assert result[0] == "error"
    assert "strategy must be one of" in result[1]
    assert log.read("pg_table") == {}


def test_pg_lifecycle_create_place_ack_reaches_created():
    log = Log()
    make_group(log)
    assert log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n3"}) is True
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["bundles_to_node_id"], rec["attempt"]) == (
        "PREPARING", {0: "n1", 1: "n2", 2: "n3"}, 0)
    assert log("pg_ack", "pg1", 0, "n1", [0], True, "") is True
    assert log("pg_ack", "pg1", 0, "n2", [1], True, "") is True
    assert log.read("pg_get", "pg1")["state"] == "PREPARING"
    assert log("pg_ack", "pg1", 0, "n3", [2], True, "") is True
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["reason"], rec["attempt"]) == ("CREATED", "", 0)
    assert log.state.pgs["pg1"].acked == {0, 1, 2}


def test_one_ack_may_cover_several_bundles_on_one_node():
    log = Log()
    make_group(log, strategy="PACK")
    assert log("pg_place", "pg1", 0, {0: "n1", 1: "n1", 2: "n2"}) is True
    assert log("pg_ack", "pg1", 0, "n1", [0, 1], True, "") is True
    assert log.state.pgs["pg1"].acked == {0, 1}
    assert log("pg_ack", "pg1", 0, "n2", [2], True, "") is True
    assert log.read("pg_get", "pg1")["state"] == "CREATED"


def test_pg_place_must_cover_exactly_the_unassigned_bundles():
    log = Log()
    make_group(log)
    assert log("pg_place", "pg1", 0, {0: "n1", 1: "n2"}) is False
    assert log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n3", 3: "n4"}) is False
    assert log("pg_place", "nope", 0, {0: "n1"}) is False
    assert log.read("pg_get", "pg1")["state"] == "PENDING"
    assert log.read("pg_get", "pg1")["bundles_to_node_id"] == {}


def test_pg_place_is_refused_once_the_group_is_preparing():
    log = Log()
    make_group(log)
    assert log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n3"}) is True
    assert log("pg_place", "pg1", 0, {0: "n4", 1: "n5", 2: "n6"}) is False
    assert log.read("pg_get", "pg1")["bundles_to_node_id"] == {0: "n1", 1: "n2", 2: "n3"}


def test_pg_ack_from_the_wrong_node_or_twice_is_ignored():
    log = Log()
    make_group(log)
    log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n3"})
    assert log("pg_ack", "pg1", 0, "n2", [0], True, "") is False  # bundle 0 is n1's
    assert log("pg_ack", "pg1", 0, "n1", [0], True, "") is True
    assert log("pg_ack", "pg1", 0, "n1", [0], True, "") is False  # already acked
    assert log("pg_ack", "pg1", 0, "n1", [7], True, "") is False  # no such bundle
    assert log("pg_ack", "nope", 0, "n1", [0], True, "") is False
    assert log.state.pgs["pg1"].acked == {0}


def test_pg_ack_before_placement_is_ignored():
    log = Log()
    make_group(log)
    assert log("pg_ack", "pg1", 0, "n1", [0], True, "") is False
    assert log.read("pg_get", "pg1")["state"] == "PENDING"


def test_a_nack_while_preparing_returns_every_bundle():
    log = Log()
    make_group(log)
    log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n3"})
    assert log("pg_ack", "pg1", 0, "n1", [0], True, "") is True
    assert log("pg_ack", "pg1", 0, "n2", [1], False, "no room on n2") is True
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["bundles_to_node_id"], rec["attempt"], rec["reason"]) == (
        "PENDING", {}, 1, "no room on n2")
    assert log.state.pgs["pg1"].acked == set()


def test_stale_attempt_place_and_ack_are_ignored():
    log = Log()
    make_group(log)
    log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n3"})
    log("pg_ack", "pg1", 0, "n2", [1], False, "no room")
    # Attempt 0 is over: its placement and the late ack of n3 change nothing.
    assert log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n3"}) is False
    assert log("pg_ack", "pg1", 0, "n3", [2], True, "") is False
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["bundles_to_node_id"], rec["attempt"]) == ("PENDING", {}, 1)
    assert log("pg_place", "pg1", 1, {0: "n4", 1: "n5", 2: "n6"}) is True
    assert log("pg_ack", "pg1", 0, "n4", [0], True, "") is False
    assert log("pg_ack", "pg1", 2, "n4", [0], True, "") is False
    assert log.state.pgs["pg1"].acked == set()
    for i, n in enumerate(("n4", "n5", "n6")):
        assert log("pg_ack", "pg1", 1, n, [i], True, "") is True
    assert log.read("pg_get", "pg1")["state"] == "CREATED"


def test_node_dead_of_a_created_group_reschedules_only_that_nodes_bundles():
    log = Log()
    for n in ("n1", "n2", "n3", "n4"):
        log("node_add", n, {})
    created_group(log)
    assert log("node_dead", "n2") is True
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["bundles_to_node_id"], rec["attempt"], rec["reason"]) == (
        "RESCHEDULING", {0: "n1", 2: "n3"}, 0, "node n2 died; re-placing bundles [1]")
    assert log.state.pgs["pg1"].acked == {0, 2}
    # Only the missing bundle may be placed.
    assert log("pg_place", "pg1", 0, {0: "n4", 1: "n4"}) is False
    assert log("pg_place", "pg1", 0, {1: "n4"}) is True
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["bundles_to_node_id"], rec["reason"]) == (
        "RESCHEDULING", {0: "n1", 1: "n4", 2: "n3"}, "")
    assert log("pg_ack", "pg1", 0, "n4", [1], True, "") is True
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["bundles_to_node_id"], rec["attempt"]) == (
        "CREATED", {0: "n1", 1: "n4", 2: "n3"}, 0)


def test_node_dead_unassigns_every_bundle_of_that_node():
    log = Log()
    log("node_add", "n1", {})
    log("node_add", "n2", {})
    make_group(log, strategy="PACK")
    log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n1"})
    log("pg_ack", "pg1", 0, "n1", [0, 2], True, "")
    log("pg_ack", "pg1", 0, "n2", [1], True, "")
    log("node_dead", "n1")
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["bundles_to_node_id"], rec["reason"]) == (
        "RESCHEDULING", {1: "n2"}, "node n1 died; re-placing bundles [0, 2]")


def test_node_dead_while_preparing_resets_the_whole_group():
    log = Log()
    log("node_add", "n1", {})
    make_group(log)
    log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n3"})
    log("pg_ack", "pg1", 0, "n2", [1], True, "")
    assert log("node_dead", "n1") is True
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["bundles_to_node_id"], rec["attempt"], rec["reason"]) == (
        "PENDING", {}, 1, "node n1 died while reserving")


def test_node_dead_leaves_groups_without_bundles_there_alone():
    log = Log()
    log("node_add", "n9", {})
    created_group(log)
    make_group(log, "pg2")
    before = log.read("pg_table")
    assert log("node_dead", "n9") is True
    assert log.read("pg_table") == before


def test_a_nack_while_rescheduling_returns_only_the_unacked_bundles():
    log = Log()
    for n in ("n1", "n2", "n3"):
        log("node_add", n, {})
    created_group(log)
    log("node_dead", "n2")
    assert log("pg_place", "pg1", 0, {1: "n4"}) is True
    assert log("pg_ack", "pg1", 0, "n4", [1], False, "n4 is full") is True
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["bundles_to_node_id"], rec["attempt"], rec["reason"]) == (
        "RESCHEDULING", {0: "n1", 2: "n3"}, 1, "n4 is full")
    assert log("pg_place", "pg1", 0, {1: "n5"}) is False  # stale attempt
    assert log("pg_place", "pg1", 1, {1: "n5"}) is True
    assert log("pg_ack", "pg1", 1, "n5", [1], True, "") is True
    rec = log.read("pg_get", "pg1")
    assert (rec["state"], rec["bundles_to_node_id"]) == ("CREATED", {0: "n1", 1: "n5", 2: "n3"})


def test_pg_remove_from_any_state():
    log = Log()
    created_group(log)
    make_group(log, "pg2")
    assert log("pg_remove", "pg1") is True
    assert log("pg_remove", "pg2") is True
    for pid in ("pg1", "pg2"):
        rec = log.read("pg_get", pid)
        assert (rec["state"], rec["bundles_to_node_id"], rec["reason"]) == ("REMOVED", {}, "removed")
    assert log.state.pgs["pg1"].acked == set()
    assert log("pg_remove", "pg1") is False
    assert log("pg_remove", "nope") is False
    # A removed group takes no placement or ack.
    assert log("pg_place", "pg2", 0, {0: "n1", 1: "n2", 2: "n3"}) is False
    assert log("pg_ack", "pg1", 0, "n1", [0], True, "") is False
    assert log.read("pg_get", "pg2")["state"] == "REMOVED"


def test_pg_holds_resources_only_while_reserving_or_created():
    log = Log()
    make_group(log)
    pg = log.state.pgs["pg1"]
    assert pg.holds() is False
    log("pg_place", "pg1", 0, {0: "n1", 1: "n2", 2: "n3"})
    assert pg.holds() is True
    for i, n in enumerate(("n1", "n2", "n3")):
        log("pg_ack", "pg1", 0, n, [i], True, "")
    assert pg.holds() is True
    log("pg_remove", "pg1")
    assert pg.holds() is False


# ------------------------------------------------------------ malformed input


@pytest.mark.parametrize("op", [
    ("no_such_command",),
    ("kv_get", b"k"),  # a read is not a write
    ("snapshot",),
    (42,),
    ("kv_put", b"k"),  # too few arguments
    ("kv_put", b"k", b"v", True, "extra"),
    ("kv_del", b"k"),
    ("node_add", "n1"),
    ("node_dead",),
    ("name_claim", "ns", ["unhashable"], b"A", {}),
    ("pg_create", "pg_new", None, "PACK", "", ""),
    ("pg_create", "pg_new", [{"CPU": 1}], "NOPE", "", ""),
    ("pg_create", "pg_new", [5], "PACK", "", ""),
    ("pg_place", ["unhashable"], 0, {}),
    ("pg_ack", "pg", 0, "n1", None, True, ""),
    ("job_add", "d", None),
    ("init", 5),
])
def test_a_malformed_command_returns_an_error_and_changes_nothing(op):
    log = Log()
    log("kv_put", b"k", b"v", True)
    log("pg_create", "pg", [{"CPU": 1.0}], "PACK", "", "")
    log("pg_place", "pg", 0, {0: "n1"})
    before = {k: v for k, v in all_reads(log.state).items() if k != "info"}
    result = log(*op, uid=b"bad")
    assert isinstance(result, tuple) and result[0] == "error"
    assert isinstance(result[1], str) and result[1]
    after = {k: v for k, v in all_reads(log.state).items() if k != "info"}
    assert after == before
    assert log.read("info")["applied"] == 4
    assert log(*op, uid=b"bad") == result  # the failure is remembered like any result


def test_an_unknown_command_names_itself_in_the_error():
    log = Log()
    assert log("frobnicate", 1) == ("error", "unknown command 'frobnicate'")
    assert log("kv_put", b"k")[1].startswith("bad kv_put command: ")


def test_a_malformed_node_add_leaves_no_half_made_node():
    log = Log()
    assert log("node_add", "n1", None)[0] == "error"
    assert log.read("nodes") == {}


def test_a_malformed_actor_put_leaves_no_actor():
    log = Log()
    assert log("actor_put", b"A", {"seq": "one"})[0] == "error"
    assert log.read("actors") == {}


def test_an_unknown_read_raises_value_error():
    with pytest.raises(ValueError, match="unknown read"):
        GcsState().read(("kv_put", b"k"))


def test_every_read_op_is_served_on_an_empty_state():
    s = GcsState()
    args = {"kv_get": (b"k",), "kv_list": (b"",), "name_lookup": ("ns", "n"), "pg_get": ("pg",), "actor": (b"A",),
            "sub": ("job-1",)}
    got = {op: s.read((op, *args.get(op, ()))) for op in sorted(READS)}
    assert got == {
        "actor": None, "actors": {}, "info": {"config": {}, "applied": 0, "nodes": 0, "actors": 0, "names": 0, "jobs": 0,
                               "placement_groups": 0, "kv_keys": 0},
        "jobs": {}, "kv_get": None, "kv_list": [], "name_lookup": None, "nodes": {}, "pg_get": None,
        "pg_table": {}, "sub": None, "subs": [],
    }


def test_encode_and_decode_command_round_trip():
    data = encode_command(b"uid", ["kv_put", b"k", b"v", True])
    assert decode_command(data) == (b"uid", ("kv_put", b"k", b"v", True))
    assert decode_command(encode_command(None, ("init", {}))) == (None, ("init", {}))
    for bad in (pickle.dumps((None, ())), pickle.dumps((None, "kv_put")), pickle.dumps((None, (1, 2)))):
        with pytest.raises(ValueError):
            decode_command(bad)


# -------------------------------------------------------------- snapshots


def busy_state() -> Log:
    """A state with something in every table, placement groups in every state, and a dead node."""
    log = Log()
    log("init", {"voters": 3}, uid=b"init")
    for n in ("n1", "n2", "n3", "n4"):
        log("node_add", n, {"address": f"addr-{n}", "resources": {"CPU": 4.0}}, uid=b"add-" + n.encode())
    log("job_add", "drv1", {"pid": 1, "node_id": "n1"}, uid=b"j1")
    log("job_add", "drv2", {"pid": 2, "node_id": "n2"})
    log("job_finish", "drv1", 12.5)
    log("name_claim", "ns", "svc", b"A1", {"node_id": "n1", "state": "ALIVE", "seq": 1}, uid=b"c1")
    log("name_claim", "ns", "gone", b"A2", {"node_id": "n2", "state": "ALIVE"})
    log("actor_put", b"A3", {"node_id": "n4", "state": "ALIVE", "meta": {"x": [1, 2]}})
    log("kv_put", b"a/1", b"one", True, uid=b"kv1")
    log("kv_put", b"a/2", b"two", True)
    log("kv_put", b"b/1", b"three", True)
    log("kv_cas", b"c", None, b"cas", uid=b"cas1")
    make_group(log, "created")
    log("pg_place", "created", 0, {0: "n1", 1: "n2", 2: "n3"})
    for i, n in enumerate(("n1", "n2", "n3")):
        log("pg_ack", "created", 0, n, [i], True, "")
    make_group(log, "preparing", 2, "STRICT_SPREAD")
    log("pg_place", "preparing", 0, {0: "n1", 1: "n3"})
    log("pg_ack", "preparing", 0, "n1", [0], True, "")
    make_group(log, "pending", 1, "STRICT_PACK")
    make_group(log, "removed", 1, "PACK")
    log("pg_remove", "removed")
    log("node_dead", "n2")  # A2 dies, "gone" is freed, "created" reschedules bundle 1
    return log


def test_snapshot_restore_gives_equal_reads():
    original = busy_state()
    restored = GcsState.restore(original.state.snapshot())
    assert all_reads(restored) == all_reads(original.state)
    assert restored.read(("pg_get", "created"))["state"] == "RESCHEDULING"
    for ns, name in (("ns", "svc"), ("ns", "gone"), ("x", "svc")):
        assert restored.read(("name_lookup", ns, name)) == original.read("name_lookup", ns, name)
    for prefix in (b"a/", b"b", b"zzz"):
        assert restored.read(("kv_list", prefix)) == original.read("kv_list", prefix)
    for key in (b"a/1", b"c", b"nope"):
        assert restored.read(("kv_get", key)) == original.read("kv_get", key)
    for pid in ("created", "preparing", "pending", "removed", "nope"):
        assert restored.read(("pg_get", pid)) == original.read("pg_get", pid)
    assert restored.applied_index == original.state.applied_index
    assert restored.pgs["preparing"].acked == {0}
    assert list(restored.dead_actors) == list(original.state.dead_actors)


def image(s: GcsState) -> dict:
    """A snapshot's content. (Its bytes also depend on which equal objects are shared -- interned strings,
    say -- so a restored state's snapshot can differ in bytes while holding the same state.)"""
    return pickle.loads(s.snapshot())


def test_the_snapshot_of_a_restored_state_holds_the_same_image():
    snap = busy_state().state.snapshot()
    assert image(GcsState.restore(snap)) == pickle.loads(snap)


def test_restore_of_empty_data_is_a_fresh_state():
    assert GcsState.restore(b"").snapshot() == GcsState().snapshot()


def test_a_restored_state_behaves_like_the_original():
    original = busy_state()
    restored = Log(GcsState.restore(original.state.snapshot()))
    restored.index = original.index
    assert isinstance(restored.state.pgs["created"].acked, set)
    future = [
        (b"kv1", ("kv_put", b"a/1", b"again", True)),  # a retry: must stay cached
        (b"cas1", ("kv_cas", b"c", None, b"cas")),  # a retried cas
        (b"j1", ("job_add", "drv1", {})),
        (None, ("kv_put", b"a/1", b"changed", True)),
        (None, ("name_claim", "ns", "svc", b"A9", {})),  # still held by A1
        (None, ("name_claim", "ns", "gone", b"A9", {})),  # freed by n2's death
        (None, ("pg_place", "created", 0, {1: "n4"})),
        (None, ("pg_ack", "created", 0, "n4", [1], True, "")),
        (None, ("pg_ack", "preparing", 0, "n3", [1], True, "")),
        (None, ("pg_place", "pending", 0, {0: "n1"})),
        (None, ("pg_ack", "pending", 0, "n1", [0], False, "busy")),
        (None, ("actor_put", b"A1", {"state": "DEAD", "seq": 2})),
        (None, ("node_dead", "n4")),
        (None, ("job_add", "drv3", {})),
    ]
    results = {"original": [], "restored": []}
    for label, log in (("original", original), ("restored", restored)):
        for uid, op in future:
            results[label].append(log(*op, uid=uid))
    assert results["restored"] == results["original"]
    assert results["original"][:3] == [False, (True, None), "00000001"]
    assert results["original"][4][0] == "exists"
    assert results["original"][5] == ("ok",)
    assert results["original"][-1] == "00000003"
    assert all_reads(restored.state) == all_reads(original.state)
    assert image(restored.state) == image(original.state)


def test_the_snapshot_is_a_copy_not_a_view():
    log = busy_state()
    snap = log.state.snapshot()
    restored = GcsState.restore(snap)
    log("kv_put", b"a/1", b"mutated", True)
    log("pg_remove", "created")
    assert restored.read(("kv_get", b"a/1")) == b"one"
    assert restored.read(("pg_get", "created"))["state"] == "RESCHEDULING"
    assert image(GcsState.restore(snap)) == pickle.loads(snap)


# ------------------------------------------------------------- determinism


NODES = ("n1", "n2", "n3", "n4", "n5")
ACTORS = tuple(f"A{i}".encode() for i in range(12))
KEYS = (b"k/1", b"k/2", b"k/3", b"j/1", b"j/2", b"z")
PGS = ("p1", "p2", "p3", "p4", "p5", "p6")


def random_run(seed: int, n: int = 400) -> tuple[list[bytes], list, set, GcsState]:
    """Drive a fresh GcsState with ``n`` random commands: (log entries, results, pg states seen, the state).

    Placements and acks are made against the state so far, so groups really move through their states.
    Commands go through encode_command/decode_command, as they do between replicas.
    """
    rng = random.Random(seed)
    log = Log()
    cmds: list[tuple[bytes | None, tuple]] = []
    entries: list[bytes] = []
    results = []
    seen: set[str] = set()
    next_uid = 0
    for _ in range(n):
        kind = rng.choice(sorted(WRITES) + ["retry", "pg_place", "pg_place", "pg_ack", "pg_ack", "pg_ack", "malformed"])
        uid: bytes | None = None
        if rng.random() < 0.5:
            next_uid += 1
            uid = b"u%d" % next_uid
        if kind == "retry" and cmds:
            uid, op = rng.choice(cmds)
        elif kind == "init":
            op = ("init", {"voters": rng.choice((1, 3, 5))})
        elif kind == "node_add":
            op = ("node_add", rng.choice(NODES), {"address": "a", "resources": {"CPU": float(rng.randint(1, 8))}})
        elif kind == "node_dead":
            op = ("node_dead", rng.choice(NODES))
        elif kind == "job_add":
            op = ("job_add", f"d{rng.randint(1, 6)}", {"pid": rng.randint(1, 100)})
        elif kind == "job_finish":
            op = ("job_finish", f"d{rng.randint(1, 6)}", float(rng.randint(0, 1000)))
        elif kind == "actor_put":
            op = ("actor_put", rng.choice(ACTORS), {
                "state": rng.choice(("PENDING", "ALIVE", "RESTARTING", "DEAD")), "seq": rng.randint(0, 5),
                "node_id": rng.choice(NODES), "restarts": rng.randint(0, 3)})
        elif kind == "name_claim":
            op = ("name_claim", rng.choice(("ns1", "ns2")), rng.choice(("x", "y", "z")), rng.choice(ACTORS),
                  {"node_id": rng.choice(NODES), "state": "ALIVE"})
        elif kind == "name_release":
            op = ("name_release", rng.choice(("ns1", "ns2")), rng.choice(("x", "y", "z")), rng.choice(ACTORS))
        elif kind == "kv_put":
            op = ("kv_put", rng.choice(KEYS), b"v%d" % rng.randint(0, 9), rng.random() < 0.5)
        elif kind == "kv_del":
            op = ("kv_del", rng.choice(KEYS + (b"k/", b"j")), rng.random() < 0.5)
        elif kind == "kv_cas":
            op = ("kv_cas", rng.choice(KEYS), rng.choice((None, b"v1", b"v2")), rng.choice((None, b"v1", b"v2")))
        elif kind == "pg_create":
            op = ("pg_create", rng.choice(PGS), [{"CPU": 1.0}] * rng.randint(1, 4),
                  rng.choice(("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")), "", "drv")
        elif kind == "pg_remove":
            op = ("pg_remove", rng.choice(PGS)) if rng.random() < 0.3 else ("kv_del", b"nothing", False)
        elif kind == "pg_place":
            pid = rng.choice(PGS)
            pg = log.state.pgs.get(pid)
            if pg is None:
                op = ("pg_place", pid, 0, {0: "n1"})
            else:
                missing = sorted(set(range(len(pg.bundles))) - set(pg.nodes))
                attempt = pg.attempt if rng.random() < 0.85 else pg.attempt - 1
                op = ("pg_place", pid, attempt, {i: rng.choice(NODES) for i in missing})
        elif kind == "pg_ack":
            pid = rng.choice(PGS)
            pg = log.state.pgs.get(pid)
            if pg is None or not pg.nodes:
                op = ("pg_ack", pid, 0, "n1", [0], True, "")
            else:
                node = rng.choice(sorted(set(pg.nodes.values())))
                mine = sorted(i for i, n in pg.nodes.items() if n == node)
                op = ("pg_ack", pid, pg.attempt, node, mine, rng.random() < 0.85, "nack")
        else:  # malformed
            op = rng.choice((("kv_put", "str", b"v", True), ("bogus", 1), ("pg_create", "p1", None, "PACK", "", "")))
        cmds.append((uid, op))
        entries.append(encode_command(uid, op))
        results.append(log.entry(entries[-1]))
        seen.update(pg.state for pg in log.state.pgs.values())
    return entries, results, seen, log.state


def test_the_same_commands_give_byte_identical_snapshots():
    entries, results, seen, first = random_run(seed=1234)
    # The run exercised the interesting paths (otherwise this test proves little).
    assert {"PENDING", "PREPARING", "CREATED", "RESCHEDULING", "REMOVED"} <= seen
    assert any(r is not None and isinstance(r, tuple) and r[:1] == ("error",) for r in results)
    assert first.dead_actors and first.kv and first.names and first.jobs

    # A second replica applies the same log.
    replay = Log()
    replay_results = [replay.entry(data) for data in entries]
    assert replay_results == results
    assert replay.state.snapshot() == first.snapshot()
    assert all_reads(replay.state) == all_reads(first)


def test_a_replica_that_restored_mid_log_ends_identical():
    entries, _, _, first = random_run(seed=99)
    half = len(entries) // 2
    early = Log()
    for data in entries[:half]:
        early.entry(data)
    late = Log(GcsState.restore(early.state.snapshot()))
    for data in entries[half:]:
        late.entry(data)
    assert image(late.state) == image(first)
    assert all_reads(late.state) == all_reads(first)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_runs_are_deterministic_across_seeds(seed):
    _, results_a, _, a = random_run(seed)
    _, results_b, _, b = random_run(seed)
    assert results_a == results_b
    assert a.snapshot() == b.snapshot()
