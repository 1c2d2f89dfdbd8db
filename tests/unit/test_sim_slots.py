"""Fake slots (load.sim.slots): plans run for the profile's E(b) from max(planned start, the
slot's previous finish); a cancelled plan is cut at max(now, its start)."""

from load.sim.slots import FakeSlots
from tests.factories import MS, resnet_profile

E1_NS, E4_NS = 6_286_000, 9_532_000  # sleep:1082,5204 at batch 1 and 4 (reference §2.4)


def slots(window_ns: tuple[int, int] = (0, 1_000 * MS)) -> FakeSlots:
    fake = FakeSlots([resnet_profile()], window_ns, noise=0.0, seed=1)
    fake.add(0, 0)
    return fake


def test_a_plan_runs_for_the_profiles_latency_from_its_planned_start() -> None:
    fake = slots()
    assert fake.run((0, 1), 0, 0, [10, 11, 12, 13], exec_at_ns=5 * MS) == 5 * MS + E4_NS
    assert fake.batches[0].size == 4 and fake.batches[0].start_ns == 5 * MS


def test_a_plan_waits_for_the_slots_previous_batch() -> None:
    fake = slots()
    first_finish_ns = fake.run((0, 1), 0, 0, [1], exec_at_ns=0)
    assert fake.run((0, 2), 0, 0, [2], exec_at_ns=1 * MS) == first_finish_ns + E1_NS


def test_a_cancelled_plan_is_cut_at_now_and_frees_its_slot_there() -> None:
    fake = slots()
    fake.run((0, 1), 0, 0, [7, 8, 9, 10], exec_at_ns=0)
    assert fake.cancel((0, 1), now_ns=2 * MS) == [7, 8, 9, 10]
    assert fake.batches[0].finish_ns == 2 * MS
    assert fake.busy_ns_in_window == 2 * MS
    assert fake.free_at_ns(0, default_ns=-1) == 2 * MS
    assert fake.complete((0, 1)) is None  # its completion finds nothing


def test_only_busy_time_inside_the_window_counts() -> None:
    fake = slots(window_ns=(2 * MS, 4 * MS))
    fake.run((0, 1), 0, 0, [1], exec_at_ns=0)
    assert fake.busy_ns_in_window == 2 * MS
    assert fake.busy_ns_between(1 * MS, 3 * MS) == 2 * MS


def test_plans_from_different_shards_with_the_same_id_are_kept_apart() -> None:
    fake = slots()
    fake.add(1, 0)
    fake.run((0, 1), 0, 0, [1], exec_at_ns=0)
    fake.run((1, 1), 1, 0, [2], exec_at_ns=0)
    assert fake.plans_running_after(1, now_ns=0) == [(1, 1)]
    assert fake.complete((0, 1)).request_ids == [1]


def test_a_mixed_fleets_slots_run_their_own_class_profile() -> None:
    fast, slow = resnet_profile(), resnet_profile(batch_size_max=8).at_speed(0.5)
    fake = FakeSlots([slow], (0, 1_000 * MS), noise=0.0, seed=1, slot_classes=["fast", "slow"],
                     class_profiles={"fast": [fast], "slow": [slow]})
    for slot in range(3):
        fake.add(slot, 0)
    assert [fake.class_of(s) for s in range(3)] == ["fast", "slow", "fast"]  # the pattern repeats
    assert fake.run((0, 1), 0, 0, [1, 2, 3, 4], exec_at_ns=0) == E4_NS
    assert fake.run((0, 2), 1, 0, [5, 6, 7, 8], exec_at_ns=0) == 2 * E4_NS
    assert fake.true_exec_ns(2, 0, 1) == E1_NS and fake.true_exec_ns(1, 0, 1) == 2 * E1_NS
    assert fake.batch_size_max() == [499]  # the largest any class runs


def test_a_homogeneous_fleet_has_no_class() -> None:
    fake = slots()
    assert fake.class_of(0) == "" and fake.true_exec_ns(0, 0, 4) == E4_NS
