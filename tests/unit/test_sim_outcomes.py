"""The outcome ledger (load.sim.outcomes): success iff the batch finishes before recv + SLO."""

from load.sim.outcomes import DROPPED, NOREPLY, PENDING, SUCCESS, TIMEOUT, OutcomeLedger
from tests.factories import MS


def test_a_request_succeeds_only_when_its_batch_finishes_before_recv_plus_slo() -> None:
    ledger = OutcomeLedger(recv_ns=[0, 10 * MS])
    ledger.judge([0, 1], slo_ns=100 * MS, finish_ns=100 * MS)
    assert list(ledger.outcome) == [TIMEOUT, SUCCESS]  # finishing exactly at the deadline is late
    assert list(ledger.finish_ns) == [100 * MS, 100 * MS]


def test_a_requeued_request_that_never_runs_again_gets_no_reply() -> None:
    ledger = OutcomeLedger(recv_ns=[0, 0, 0])
    ledger.judge([0, 1], slo_ns=100 * MS, finish_ns=50 * MS)
    ledger.mark([1], PENDING)  # preempted: back in the policy's queue
    ledger.mark([2], DROPPED)
    ledger.close()
    assert list(ledger.outcome) == [SUCCESS, NOREPLY, DROPPED]
