"""Reference §1.6: the incremental batch policy, with hand-computed resnet numbers.

finish(b) at t = 0 with no slot constraint is Dctrl + Ddata*b + E(b) = 5.304 + 1.132*b ms.
"""

import pytest

from shard.core.batching import BatchQueue
from shard.core.config import DropPolicy
from shard.core.latency import NEVER_BEFORE_NS, NEVER_NS
from tests.factories import MS, resnet_latency

US = 1000


def queue(drop: DropPolicy = DropPolicy.WINDOW_DROP) -> BatchQueue:
    return BatchQueue(resnet_latency(), drop, ctrl_ns=100_000, data_ns=50_000)


def fill(q: BatchQueue, deadlines_ms: list[float]) -> None:
    for rid, deadline in enumerate(deadlines_ms):
        q.push(int(deadline * MS), rid)


def test_free_lunch_grows_the_batch_past_the_target_while_the_head_deadline_holds() -> None:
    q = queue()
    fill(q, [100] * 5)
    q.update(0, NEVER_BEFORE_NS, target=2)
    assert q.batch_size == 5
    assert q.deadline_ns == 100 * MS


def test_free_lunch_stops_where_the_next_request_would_miss_the_head_deadline() -> None:
    q = queue()
    fill(q, [9.9] + [100] * 9)  # finish(4) = 9.832 ms <= 9.9 < finish(5) = 10.964 ms
    q.update(0, NEVER_BEFORE_NS, target=1)
    assert q.batch_size == 4


def test_window_shrinks_to_newest_requests_that_fit_one_batch_and_keeps_feasible_prefix() -> None:
    q = queue()
    fill(q, [10, 100, 100, 100, 100])  # all five need 10.964 ms > 10: request 0 goes to prefix
    q.update(0, NEVER_BEFORE_NS, target=4)
    assert q.batch_size == 4  # request 0 meets 10 ms at the target size (9.832 ms)
    assert q.deadline_ns == 10 * MS
    assert q.pop_inputs() == [0, 1, 2, 3]
    assert q.pop_drops() == []


def test_window_drop_drops_an_old_request_infeasible_at_the_target_even_if_it_fits_alone() -> None:
    q = queue()
    fill(q, [9, 100, 100, 100, 100])  # alone it would finish at 6.436 ms, at target 4 at 9.832
    q.update(0, NEVER_BEFORE_NS, target=4)
    assert q.pop_drops() == [0]
    assert q.batch_size == 4
    assert q.pop_inputs() == [1, 2, 3, 4]


def test_drop_timeout_keeps_the_old_request_and_batches_by_free_lunch_alone() -> None:
    q = queue(DropPolicy.DROP_TIMEOUT)
    fill(q, [9, 100, 100, 100, 100])
    q.update(0, NEVER_BEFORE_NS, target=1)
    assert q.pop_drops() == []
    assert q.batch_size == 3  # finish(3) = 8.7 ms <= 9 ms < finish(4)
    assert q.pop_inputs() == [0, 1, 2]


def test_fcfs_keeps_late_requests_and_runs_them_first() -> None:
    q = queue(DropPolicy.WINDOW_FCFS)
    fill(q, [9, 100, 100, 100, 100])
    q.update(0, NEVER_BEFORE_NS, target=4)
    assert q.pop_drops() == []
    assert q.pop_inputs() == [0, 1, 2, 3]
    assert len(q) == 1


def test_slot_free_time_delays_the_batch_and_can_drop_the_head() -> None:
    q = queue()
    fill(q, [20, 100, 100])
    q.update(0, gpu_free_at_ns=15 * MS, target=3)  # 15 ms + E(3) = 23.45 ms > 20 ms
    assert q.pop_drops() == [0]
    assert q.batch_size == 2
    assert q.deadline_ns == 100 * MS


def test_empty_queue_has_no_batch() -> None:
    q = queue()
    q.update(0, NEVER_BEFORE_NS, target=8)
    assert q.batch_size == 0
    assert q.deadline_ns == NEVER_NS


def test_requests_infeasible_even_alone_are_dropped_when_the_window_empties() -> None:
    # P7 fixed: the reference would strand these in prefix until the next arrival.
    q = queue()
    fill(q, [3, 4])
    q.update(0, NEVER_BEFORE_NS, target=8)
    assert q.batch_size == 0
    assert q.pop_drops() == [0, 1]
    assert len(q) == 0


def test_a_shorter_per_request_slo_is_queued_in_deadline_order() -> None:
    q = queue()
    fill(q, [100, 100])
    q.push(50 * MS, 7)
    q.update(0, NEVER_BEFORE_NS, target=8)
    assert q.pop_inputs() == [7, 0, 1]


def test_time_must_not_go_backwards() -> None:
    q = queue()
    q.update(10, NEVER_BEFORE_NS, target=1)
    with pytest.raises(AssertionError, match="backwards"):
        q.update(5, NEVER_BEFORE_NS, target=1)


def test_pop_all_returns_everything_in_order() -> None:
    q = queue()
    fill(q, [100, 101, 102])
    assert q.pop_all() == [0, 1, 2]
    assert len(q) == 0


def test_gentler_drop_keeps_an_old_request_that_fits_beta_times_the_target() -> None:
    q = BatchQueue(resnet_latency(), DropPolicy.WINDOW_DROP, ctrl_ns=100_000, data_ns=50_000, drop_beta=0.6)
    fill(q, [9, 100, 100, 100, 100])  # misses at target 4 (9.832 ms), fits at ceil(0.6 x 4) = 3
    q.update(0, NEVER_BEFORE_NS, target=4)
    assert q.pop_drops() == []
    assert q.batch_size == 3  # the batch shrinks to what the old request can wait for
    assert q.pop_inputs() == [0, 1, 2]


def test_gentler_drop_still_drops_what_misses_even_the_smaller_batch() -> None:
    q = BatchQueue(resnet_latency(), DropPolicy.WINDOW_DROP, ctrl_ns=100_000, data_ns=50_000, drop_beta=0.6)
    fill(q, [8, 100, 100, 100, 100])  # 8 ms < finish(3) = 8.7 ms
    q.update(0, NEVER_BEFORE_NS, target=4)
    assert q.pop_drops() == [0]
    assert q.batch_size == 4
