"""Issue 14: a model too hot for one shard is split across shards, and merged back as it cools."""

from __future__ import annotations

import msgspec

from coordinator.epoch import assignment_errors, models_hosted, next_assignment
from coordinator.placement import PlacementConfig, merge_pieces, pieces_of, split_counts
from coordinator.rates import RateMemory
from schemas.control import Assignment, ModelLoad, ShardHeartbeat, assignment_decoder, encode
from shard.core.config import CoreConfig
from tests.factories import model_config

SHARDS = ["shard-0", "shard-1", "shard-2", "shard-3"]
SLOTS = [f"gpu-{i}" for i in range(16)]
MODELS = [model_config("hot"), model_config("cold")]
HOSTS = {slot: frozenset({"hot", "cold"}) for slot in SLOTS}
BUDGET = PlacementConfig(shard_rps_max=1000.0)


def assign(rates: dict[str, float], previous: Assignment | None = None, shards: list[str] = SHARDS) -> Assignment:
    return next_assignment(MODELS, rates, shards, HOSTS, previous, core=CoreConfig(), placement=BUDGET)


def test_split_counts_grow_at_once_and_shrink_with_hysteresis() -> None:
    hosts = {"hot": 16}
    assert split_counts(None, {"hot": 2500.0}, hosts, 4, BUDGET) == {"hot": 3}
    assert split_counts(None, {"hot": 9000.0}, hosts, 4, BUDGET) == {"hot": 4}  # no more than the shards
    assert split_counts(None, {"hot": 9000.0}, {"hot": 2}, 4, BUDGET) == {"hot": 2}  # nor the slots hosting it
    assert split_counts(None, {"hot": 9000.0}, hosts, 4, PlacementConfig()) == {"hot": 1}  # 0: never split
    three = Assignment(models={"hot": "shard-0"}, splits={"hot": ["shard-0", "shard-1", "shard-2"]})
    assert split_counts(three, {"hot": 1700.0}, hosts, 4, BUDGET) == {"hot": 3}  # fits 2 only at 85%: held
    assert split_counts(three, {"hot": 1500.0}, hosts, 4, BUDGET) == {"hot": 2}  # 2 x 800 holds it
    assert split_counts(three, {"hot": 100.0}, hosts, 4, BUDGET) == {"hot": 1}


def test_a_hot_model_is_served_by_several_shards_each_with_its_own_slots() -> None:
    assignment = assign({"hot": 3500.0, "cold": 50.0})
    hot = assignment.shards_of("hot")
    assert len(hot) == 4 and len(set(hot)) == 4 and assignment.models["hot"] == hot[0]
    assert assignment_errors(assignment, SHARDS, HOSTS, ["hot", "cold"]) == []
    for shard in SHARDS:
        assert "hot" in assignment.models_of(shard)
        assert sum(1 for owner in assignment.slots.values() if owner == shard) >= 3
    assert sorted(assignment.slots) == sorted(SLOTS)


def test_a_split_is_sticky_and_merges_back_as_the_rate_falls() -> None:
    first = assign({"hot": 2500.0, "cold": 50.0})
    again = assign({"hot": 2500.0, "cold": 50.0}, first)
    assert again.splits == first.splits and again.models == first.models and again.slots == first.slots
    cooler = assign({"hot": 1200.0, "cold": 50.0}, again)
    assert cooler.shards_of("hot") == first.shards_of("hot")[:2]  # the last pieces go; the primary stays
    cold = assign({"hot": 100.0, "cold": 50.0}, cooler)
    assert cold.splits == {} and cold.models["hot"] == first.models["hot"]
    assert assignment_errors(cold, SHARDS, HOSTS, ["hot", "cold"]) == []


def test_a_split_shrinks_to_the_live_shards_when_one_dies() -> None:
    first = assign({"hot": 3500.0, "cold": 50.0})
    dead = first.shards_of("hot")[1]
    live = [s for s in SHARDS if s != dead]
    after = assign({"hot": 3500.0, "cold": 50.0}, first, live)
    assert dead not in after.shards_of("hot") and len(after.shards_of("hot")) == 3
    assert assignment_errors(after, live, HOSTS, ["hot", "cold"]) == []


def test_pieces_round_trip_and_the_wire_form_keeps_older_readers_working() -> None:
    split = Assignment(epoch=3, models={"hot": "b", "cold": "a"}, splits={"hot": ["b", "c", "a"]})
    assert merge_pieces(pieces_of(split)) == (split.models, split.splits)
    assert assignment_decoder.decode(encode(split)) == split
    legacy = msgspec.json.encode({"epoch": 3, "models": {"hot": "b"}, "slots": {}})
    assert assignment_decoder.decode(legacy).shards_of("hot") == ["b"]
    assert split.models_of("a") == frozenset({"hot", "cold"}) and split.models_of("c") == frozenset({"hot"})


def test_a_split_model_plans_with_the_sum_of_its_shards_rates_and_a_moving_one_with_the_largest() -> None:
    def beat(shard: str, rates: dict[str, float]) -> ShardHeartbeat:
        return ShardHeartbeat(shard_id=shard, models={m: ModelLoad(rate_rps=r, pending=0) for m, r in rates.items()})

    shards = {"a": beat("a", {"hot": 130.0, "cold": 20.0}), "b": beat("b", {"hot": 140.0, "cold": 5.0}),
              "c": beat("c", {"hot": 60.0})}  # c just left the split: its meter still shows the past
    rates = RateMemory(hold_ns=1).update(shards, 0, {"hot": ["a", "b"]})
    assert rates == {"cold": 20.0, "hot": 270.0}


def test_every_shards_models_at_once_match_asking_shard_by_shard() -> None:
    a = Assignment(models={"m": "A", "n": "B", "o": "A", "p": "C"}, splits={"m": ["A", "B", "C"], "p": ["C", "A"]})
    served = a.models_by_shard()
    assert served == {s: a.models_of(s) for s in ("A", "B", "C")}
    assert a.models_of("D") == frozenset() and "D" not in served


def test_slots_per_model_are_the_hosting_slots_in_slot_order() -> None:
    """`models_hosted` inverts slot -> models by groups of slots hosting the same models; a model
    in two groups still lists its slots sorted, as asking every slot would."""
    hosts = {"b1": frozenset({"x", "y"}), "a2": frozenset({"y", "z"}), "a1": frozenset({"x", "y"}),
             "c0": frozenset(), "a3": frozenset({"y", "z"})}
    naive = {m: sorted(s for s, names in hosts.items() if m in names) for m in ("x", "y", "z")}
    assert models_hosted(hosts) == naive
