"""Issue 14 in simulation: a model too hot for one shard runs split over several, each shard its
own policy on its share of the traffic, and loses little against one shard with every slot."""

from __future__ import annotations

from collections import Counter

from load.schedule import build_schedule
from load.sim.kernel import model_configs, run_shards
from load.sim.partition import partitioned_shards
from load.sim.records import SimOptions
from load.sim.search import run_report
from load.workload import load_workload

SPLIT = SimOptions(scale=0.5, shards=4, shard_rps_max=2000.0, checks=True)  # 7,000 req/s over 4


def test_a_hot_model_is_split_and_served_like_one_shard_with_every_slot() -> None:
    loaded = load_workload("hot")
    whole = run_report(loaded, "symphony-plus", SimOptions(scale=0.5))
    split = run_report(loaded, "symphony-plus", SPLIT)
    assert whole.model_shards == {"ranker": 1} and split.model_shards == {"ranker": 4}
    assert whole.bad_rate < 0.001 and split.bad_rate < 0.001
    assert split.total.success == whole.total.success


def test_each_shard_takes_its_slot_share_of_a_split_model() -> None:
    loaded = load_workload("hot")
    models = model_configs(loaded, SPLIT.scale)
    specs = partitioned_shards(models, loaded.workload.slots, SPLIT, "symphony")
    assert [spec.models for spec in specs] == [["ranker"]] * 4
    assert sorted(s for spec in specs for s in spec.slots) == list(range(loaded.workload.slots))
    run = run_shards(specs, models, build_schedule(loaded.workload, scale=SPLIT.scale), SPLIT)
    shard_of_slot = {slot: k for k, spec in enumerate(specs) for slot in spec.slots}
    served = Counter()
    for batch in run.batches:
        served[shard_of_slot[batch.slot_id]] += batch.size
    total = sum(served.values())
    for k, spec in enumerate(specs):
        slot_share = len(spec.slots) / loaded.workload.slots
        assert abs(served[k] / total - slot_share) < 0.1 * slot_share
